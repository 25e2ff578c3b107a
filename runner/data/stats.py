"""Dataset statistics and the `--show` view of what trains."""

from __future__ import annotations

IGNORE = -100
ANSI_ON, ANSI_OFF = "\x1b[1;32m", "\x1b[0m"


def percentiles(values: list[int]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q):
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {"min": ordered[0], "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1],
            "mean": round(sum(ordered) / len(ordered), 1)}


def summarize(columns: dict, stage: str) -> dict:
    """Rows, tokens, trained tokens and length percentiles of tokenized (unpacked) columns."""
    if "labels" in columns:
        lengths = [len(x) for x in columns["input_ids"]]
        trained = sum(sum(1 for t in labels if t != IGNORE) for labels in columns["labels"])
        return {"rows": len(lengths), "tokens": sum(lengths), "trained_tokens": trained,
                "length": percentiles(lengths)}
    prompt = columns["prompt_input_ids"]
    completion_keys = [k for k in ("chosen_input_ids", "rejected_input_ids", "completion_input_ids") if k in columns]
    lengths = [len(p) + max(len(columns[k][i]) for k in completion_keys) for i, p in enumerate(prompt)]
    trained = sum(len(x) for k in completion_keys for x in columns[k])
    out = {"rows": len(prompt), "tokens": sum(lengths), "trained_tokens": trained, "length": percentiles(lengths)}
    if "label" in columns:
        out["desirable"] = sum(1 for x in columns["label"] if x)
        out["undesirable"] = len(columns["label"]) - out["desirable"]
    return out


def mark_trained(tokenizer, input_ids: list, labels: list, color: bool) -> str:
    """Decoded text with trained tokens in green (terminal) or [[brackets]] (pipe, file)."""
    on, off = (ANSI_ON, ANSI_OFF) if color else ("[[", "]]")
    parts, run, state = [], [], None
    for token, label in zip(input_ids, labels):
        trained = label != IGNORE
        if state is not None and trained != state:
            parts.append((state, run))
            run = []
        state = trained
        run.append(token)
    if run:
        parts.append((state, run))
    text = ""
    for trained, tokens in parts:
        piece = tokenizer.decode(tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        text += f"{on}{piece}{off}" if trained else piece
    return text


def show_samples(tokenizer, dataset, n: int, color: bool) -> str:
    """The first n samples; packed rows are split back into their samples."""
    out, shown = [], 0
    for row in dataset:
        pieces = _split_packed(row) if "position_ids" in row else [row]
        for sample in pieces:
            if shown >= n:
                return "\n".join(out)
            shown += 1
            if "labels" in sample:
                body = mark_trained(tokenizer, sample["input_ids"], sample["labels"], color)
            else:
                body = _show_preference(tokenizer, sample, color)
            out.append(f"--- sample {shown} ({_length(sample)} tokens) ---\n{body}")
    return "\n".join(out)


def _length(sample) -> int:
    if "input_ids" in sample:
        return len(sample["input_ids"])
    return len(sample["prompt_input_ids"]) + max(len(sample[k]) for k in sample if k.endswith("_input_ids"))


def _split_packed(row) -> list[dict]:
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
    return [{"input_ids": row["input_ids"][a:b], "labels": row["labels"][a:b]} for a, b in zip(starts, starts[1:])]


def _show_preference(tokenizer, sample, color) -> str:
    on, off = (ANSI_ON, ANSI_OFF) if color else ("[[", "]]")
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    text = decode(sample["prompt_input_ids"])
    for key in ("chosen_input_ids", "rejected_input_ids", "completion_input_ids"):
        if key in sample:
            label = key.split("_")[0]
            if key == "completion_input_ids":
                label += " (desirable)" if sample.get("label") else " (undesirable)"
            text += f"\n  <{label}> {on}{decode(sample[key])}{off}"
    return text


def format_stats(stats: dict) -> str:
    lines = [f"data hash {stats.get('data_hash', '?')[:16]}  stage {stats.get('stage')}  "
             f"template {stats.get('template', {}).get('name')} ({stats.get('template', {}).get('origin')})"]
    for ds in stats.get("datasets", []):
        skipped = sum(ds.get("skipped", {}).values())
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(ds.get("skipped", {}).items()))
        lines.append(f"  {ds['path']} ({ds['format']}): {ds['rows_read']} read, {ds['rows']} kept, "
                     f"{skipped} skipped" + (f" ({detail})" if detail else ""))
    for split in ("train", "eval"):
        part = stats.get(split)
        if not part:
            continue
        length = part.get("length", {})
        lines.append(f"{split}: {part['rows']} rows, {part['tokens']} tokens, {part['trained_tokens']} trained"
                     + (f"; length min {length['min']} p50 {length['p50']} p90 {length['p90']} p99 {length['p99']}"
                        f" max {length['max']}" if length else ""))
        events = {k: v for k, v in part.get("counts", {}).items() if v}
        if events:
            lines.append("  " + ", ".join(f"{k}: {v}" for k, v in sorted(events.items())))
        if part.get("packing"):
            p = part["packing"]
            lines.append(f"  packed {p['samples']} samples into {p['rows']} rows, efficiency {p['efficiency']:.1%}")
    return "\n".join(lines)
