"""What an evaluation leaves behind, in RUN_DIR/eval/ (or a config's own folder):

    eval/lm-eval-<key>.json   lm-eval's whole results dict (made JSON-safe), one per evaluation
    eval/summary.json         every evaluation of this run, keyed by what decides its numbers: the
                              plan hash, the model evaluated (fine-tuned or base), the tasks and their
                              versions, shots, limit and chat; a repeat replaces its own entry

plus the table printed to the terminal and the model card's "Evaluation" section. Every file is
written whole (a temp name, then a rename)."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from runner.plan import hashing
from runner.rundir.layout import write_json, write_text_atomic

SUMMARY = "summary.json"
SKIPPED_KEYS = ("alias", "name", "sample_len", " ")
CARD_HEADING = "## Evaluation"


def entry(results: dict, *, plan, settings, model: str, adapter: str | None) -> dict:
    """The summary entry of one lm-eval results dict. `model`: "fine-tuned", "base" or "config"."""
    versions = {k: _plain(v) for k, v in (results.get("versions") or {}).items()}
    rows = table_rows(results)
    key_parts = {"plan_hash": plan.hashes.plan, "model": model, "tasks": sorted(versions),
                 "versions": versions, "num_fewshot": settings.num_fewshot, "limit": settings.limit,
                 "chat": settings.chat}
    key = hashing.short(hashing.digest_text(key_parts))
    return {
        "key": key, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": model,
        "base_model": plan.model.path if plan.model.source == "hub" else Path(plan.model.path).name,
        "gguf_file": plan.model.gguf_file, "adapter": adapter, "plan_hash": plan.hashes.plan,
        "tasks": list(settings.tasks), "task_versions": versions,
        "n_shot": {k: _plain(v) for k, v in (results.get("n-shot") or {}).items()},
        "num_fewshot": settings.num_fewshot, "limit": settings.limit, "chat": settings.chat,
        "system_prompt": plan.data.template.system_prompt if settings.chat else None,
        "samples": {k: (v or {}).get("effective") for k, v in (results.get("n-samples") or {}).items()},
        "scores": [{"task": t, "metric": m, "value": v, "stderr": s} for t, m, v, s in rows],
        "lm_eval": _lm_eval_version(), "results_file": f"lm-eval-{key}.json",
    }


def write(out_dir: Path, results: dict, summary_entry: dict) -> Path:
    """The full results file, then the summary with this entry in (its own key replaced)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / summary_entry["results_file"], json.dumps(json_safe(results), indent=2) + "\n")
    summary = read_summary(out_dir)
    summary["evaluations"] = [e for e in summary["evaluations"] if e.get("key") != summary_entry["key"]]
    summary["evaluations"].append(summary_entry)
    write_json(out_dir / SUMMARY, summary)
    return out_dir / SUMMARY


def read_summary(out_dir: Path) -> dict:
    path = Path(out_dir) / SUMMARY
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("evaluations"), list):
            return data
    except (OSError, ValueError):
        pass
    return {"evaluations": []}


def json_safe(value):
    """lm-eval's results hold numpy numbers, dtypes, functions and sets: plain JSON values, NaN as null."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return json_safe(item())
        except (TypeError, ValueError):
            pass
    return str(value)


def table_rows(results: dict) -> list[tuple]:
    """(task, metric, value, stderr) for what a person reads first: each requested task, each
    group's aggregate and its sub-groups; a group's leaf tasks only when it has no aggregate (the
    full file has them all)."""
    scores = results.get("results") or {}
    children = results.get("group_subtasks") or {}
    shown = []
    all_children = {c for cs in children.values() for c in cs}
    for name in [n for n in scores if n not in all_children]:
        shown.append(name)
        kids = children.get(name) or []
        if not _metrics(scores.get(name, {})):
            shown += kids
        else:
            shown += [k for k in kids if k in children]  # sub-groups (mmlu_stem, ...), not the leaves
    rows = []
    for name in dict.fromkeys(shown):
        for metric, value, stderr in _metrics(scores.get(name, {})):
            rows.append((name, metric, value, stderr))
    return rows


def _metrics(task_scores: dict) -> list[tuple]:
    out = []
    for key, value in task_scores.items():
        if key in SKIPPED_KEYS or "_stderr," in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        metric, _, filt = key.partition(",")
        stderr = task_scores.get(f"{metric}_stderr,{filt}")
        shown = metric if filt in ("", "none") else f"{metric} ({filt})"
        out.append((shown, _plain(value), _plain(stderr) if isinstance(stderr, (int, float)) else None))
    return out


def format_table(entries: list[dict]) -> str:
    """One evaluation (or a fine-tune and its baseline) as aligned text columns."""
    tuned = next((e for e in entries if e["model"] != "base"), None)
    base = next((e for e in entries if e["model"] == "base"), None)
    header = ["task", "version", "shots", "metric"]
    if tuned and base:
        header += ["fine-tuned", "base", "diff"]
    else:
        header += ["value", "stderr"]
    lines = [header]
    main = tuned or base
    base_scores = {(s["task"], s["metric"]): s["value"] for s in (base or {}).get("scores", [])}
    for score in main["scores"]:
        task, metric = score["task"], score["metric"]
        row = [task, _version(main, task), str(main["n_shot"].get(task, "")), metric]
        if tuned and base:
            other = base_scores.get((task, metric))
            row += [_num(score["value"]), _num(other),
                    f"{score['value'] - other:+.4f}" if other is not None and score["value"] is not None else ""]
        else:
            row += [_num(score["value"]), _num(score["stderr"]) if score["stderr"] is not None else ""]
        lines.append(row)
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines)


def card_section(summary: dict) -> str:
    """The model card's Evaluation section: every evaluation in summary.json, newest settings last,
    a baseline beside the fine-tune it was run with."""
    groups: dict = {}
    for e in summary["evaluations"]:
        settings = (tuple(sorted(e["task_versions"])), e["num_fewshot"], e["limit"], e["chat"])
        groups.setdefault(settings, []).append(e)
    lines = [CARD_HEADING, "",
             "Scored with [lm-evaluation-harness](https://github.com/EleutherAI/lm-evaluation-harness) by "
             "`runner eval`; each evaluation's whole result is in `eval/` (summary.json names the files).", ""]
    for (tasks, fewshot, limit, chat), entries in groups.items():
        latest = {}
        for e in entries:
            latest[e["model"]] = e
        tuned = latest.get("fine-tuned") or latest.get("config")
        base = latest.get("base")
        notes = [f"shots {fewshot if fewshot is not None else 'task default'}",
                 f"limit {limit}" if limit is not None else "all questions",
                 "chat template" if chat else "no chat template"]
        lines += [f"**{', '.join(tasks)}** ({'; '.join(notes)})", ""]
        cols = ["task", "version", "metric"] + (["fine-tuned"] if tuned else []) + (["base", "diff"] if base else [])
        lines += ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        main = tuned or base
        base_scores = {(s["task"], s["metric"]): s["value"] for s in (base or {}).get("scores", [])}
        for s in main["scores"]:
            row = [s["task"], _version(main, s["task"]), s["metric"], _num(s["value"])]
            if tuned and base:
                other = base_scores.get((s["task"], s["metric"]))
                row += [_num(other), f"{s['value'] - other:+.4f}" if other is not None and s["value"] is not None else ""]
            lines.append("| " + " | ".join(str(c) for c in row) + " |")
        lines.append("")
    return "\n".join(lines)


def update_card(run_dir: Path, summary: dict) -> bool:
    """README.md's Evaluation section added or replaced; the rest of the card kept as it is. A run
    without a card is left without one."""
    path = Path(run_dir) / "README.md"
    if not path.is_file():
        return False
    text = path.read_text()
    section = card_section(summary).rstrip() + "\n\n"
    found = re.search(rf"^{re.escape(CARD_HEADING)}\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if found:
        text = text[:found.start()] + section + text[found.end():]
    else:
        anchor = re.search(r"^## Hashes\n", text, flags=re.M)
        text = (text[:anchor.start()] + section + text[anchor.start():]) if anchor else text.rstrip() + "\n\n" + section
    write_text_atomic(path, text)
    return True


def _version(entry_: dict, task: str) -> str:
    v = entry_["task_versions"].get(task)
    return "" if v is None else str(v)


def _num(value) -> str:
    return "" if value is None else f"{value:.4f}"


def _plain(value):
    return json_safe(value)


def _lm_eval_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        return None
