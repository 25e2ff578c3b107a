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
        trained = sum(len(labels) - labels.count(IGNORE) for labels in columns["labels"])
        return {"rows": len(lengths), "tokens": sum(lengths), "trained_tokens": trained,
                "length": percentiles(lengths)}
    prompt = columns["prompt_input_ids"]
    completion_keys = [k for k in ("chosen_input_ids", "rejected_input_ids", "completion_input_ids") if k in columns]
    lengths = [len(p) + max((len(columns[k][i]) for k in completion_keys), default=0) for i, p in enumerate(prompt)]
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
                if sample.get("images") or sample.get("videos"):
                    from runner.data.vlm import mark_media

                    body = mark_media(body, tokenizer, sample)
            else:
                body = _show_preference(tokenizer, sample, color)
            out.append(f"--- sample {shown} ({_length(sample)} tokens) ---\n{body}")
    return "\n".join(out)


def _length(sample) -> int:
    if "input_ids" in sample:
        return len(sample["input_ids"])
    return len(sample["prompt_input_ids"]) + max((len(sample[k]) for k in sample
                                                  if k.endswith("_input_ids") and k != "prompt_input_ids"), default=0)


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


# Above this share of rows truncated or dropped, a run starts with a warning; above REFUSE_SHARE of
# rows without a trained token (or without a trained end-of-turn), it does not start.
WARN_SHARE = 0.10
REFUSE_SHARE = 0.5


def findings(stats: dict, sequence: dict) -> tuple[list[str], list[str]]:
    """(errors, warnings) about what the prepared data would train, from the statistics alone (no
    tokenizer, no torch): `runner plan` reads them from the cache entry, train and preprocess act
    on them before any model loads."""
    errors, warnings = [], []
    max_length = sequence.get("max_length")
    used = stats.get("template") or {}
    template = used.get("origin") if used.get("name") == "jinja" else used.get("name")  # a user's file by its path
    for split in ("train", "eval"):
        part = stats.get(split)
        if not part:
            continue
        counts, rows_in, rows = part.get("counts", {}), part.get("rows_in") or part.get("rows", 0), part.get("rows", 0)
        if not rows_in:
            continue

        def share(n):
            return f"{n} of {rows_in} {split} rows ({n / rows_in:.0%})"

        refuse = (errors if split == "train" else warnings).append
        allowed = sequence.get("allow_all_truncated")
        no_trained, eot_missing = counts.get("dropped_no_trained_tokens", 0), counts.get("eot_not_trained", 0)
        if no_trained > REFUSE_SHARE * rows_in and not allowed:
            refuse(f"{share(no_trained)} have no trained token left once cut to sequence.max_length={max_length}: "
                   "the run would train on few rows (raise max_length, or set sequence.allow_all_truncated: true)")
        elif no_trained > WARN_SHARE * rows_in:
            warnings.append(f"{share(no_trained)} are dropped: no trained token is left in them")
        if eot_missing > REFUSE_SHARE * rows_in:
            refuse(f"template {template} trains no end-of-turn token in {share(eot_missing)}: the model would "
                   "not learn to stop (pick the template of this model's family, or template.name: tokenizer)")
        elif eot_missing:
            warnings.append(f"template {template} trains no end-of-turn token in {share(eot_missing)}")
        cut = counts.get("eot_cut", 0)
        lose = f"{cut} of them lose their end-of-turn token" if cut else "their end-of-turn tokens are kept"
        for key, verb in (("truncated", f"are truncated ({lose})"), ("dropped_too_long", "are dropped as too long"),
                          ("split", "are split into pieces")):
            if counts.get(key, 0) > WARN_SHARE * rows_in:
                warnings.append(f"{share(counts[key])} {verb} at sequence.max_length={max_length}")
        if cut and cut >= rows and split == "train" and not allowed:
            errors.append(f"every one of the {rows} train samples loses its end-of-turn token to truncation at "
                          f"sequence.max_length={max_length}: the model would never see where an answer ends "
                          "(raise max_length, set sequence.truncation: drop, or sequence.allow_all_truncated: true)")
        elif cut and counts.get("truncated", 0) <= WARN_SHARE * rows_in:
            warnings.append(f"{cut} of {rows} {split} samples lose their end-of-turn token to truncation at "
                            f"sequence.max_length={max_length}")
    return errors, warnings
