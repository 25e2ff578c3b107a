"""bench/multigpu.py's figures and checks from what the runs left: per-GPU throughput and memory from
the ranks' probes, scaling efficiency, per-step loss parity at one global batch, the accelerate-launch
cross-check, and the Markdown / JSON report (merged with earlier calls' rows)."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from multigpu_matrix import CROSS_CHECK, PARITY, RUNS

FIRST_LOSSES = 3
PARITY_RTOL = 5e-3  # bf16: the gradients (and a split row's attention) are summed in another order
MIN_PARITY_STEPS = 3


def training_steps(step_times: list[float], tokens: list[int]) -> list[tuple[float | None, int]]:
    """(seconds, tokens) per training step from the optimizer-step hook's records: step_times[i] is the
    time from hook i to hook i+1, tokens[i+1] what the model was fed in between. DeepSpeed ZeRO-3 steps
    its torch optimizer once per parameter sub-group, so one training step can be several hook calls:
    a step starts at each call that follows fed tokens. The first step has no start time (None)."""
    steps: list[list] = []
    for i, fed in enumerate(tokens):
        seconds = step_times[i - 1] if 0 < i <= len(step_times) else None
        if i == 0 or fed > 0:
            steps.append([seconds, fed])
        elif seconds is not None and steps[-1][0] is not None:  # another sub-step of the same step
            steps[-1][0] += seconds
    return [(t, n) for t, n in steps]


def summarise(ranks: list[dict], warmup: int) -> dict:
    """tokens/s per GPU over the timed steps (after `warmup`), per rank and averaged; peak memory. A
    rank's tokens are those its embedding saw: under context parallelism its piece of each row (the
    row's buffers are split before the forward), so the total is the rows' tokens per second."""
    per_rank = []
    for r in ranks:
        timed = [(t, n) for t, n in training_steps(r["step_times_s"], r["tokens_per_step"])[warmup:] if t is not None]
        secs = sum(t for t, _ in timed)
        per_rank.append({"rank": r["rank"],
                         "tokens_per_s": round(sum(k for _, k in timed) / secs, 1) if secs else None,
                         "peak_allocated_gib": r.get("peak_allocated_gib"), "peak_reserved_gib": r.get("peak_reserved_gib"),
                         "peak_rss_gib": r.get("peak_rss_gib"), "timed_steps": len(timed)})
    rates = [p["tokens_per_s"] for p in per_rank if p["tokens_per_s"]]
    mem = [p["peak_reserved_gib"] for p in per_rank if p["peak_reserved_gib"] is not None]
    rss = [p["peak_rss_gib"] for p in per_rank if p["peak_rss_gib"] is not None]
    return {"tokens_per_s_per_gpu": round(sum(rates) / len(rates), 1) if rates else None,
            "tokens_per_s_total": round(sum(rates), 1) if rates else None,
            "peak_reserved_gib_max": max(mem) if mem else None, "peak_rss_gib_max": max(rss) if rss else None,
            "ranks_reported": len(ranks), "per_rank": per_rank,
            "wrapper": ranks[0].get("wrapper") if ranks else None, "fsdp2": ranks[0].get("fsdp2") if ranks else None}


def train_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "train"]


def _global_batch(r: dict) -> int | None:
    """Rows per optimizer step: accumulation x the processes that read different batches."""
    if r.get("gradient_accumulation") is None:
        return None
    return r["gradient_accumulation"] * r["gpus"] // r.get("split", 1)


def _pairs(results: list[dict]) -> list[tuple[dict, dict]]:
    """(run, its reference): each same-global-batch run against its own smallest GPU count, each split
    run against its unsplit partner."""
    out = []
    for name, run in RUNS.items():
        rows = sorted((r for r in results if r["run"] == name and r.get("all_losses")), key=lambda r: r["gpus"])
        if run.same_global_batch and rows:
            out += [(r, rows[0]) for r in rows[1:]]
        if name in PARITY:
            ref = next((r for r in results if r["run"] == PARITY[name] and r.get("all_losses")), None)
            out += [(r, ref) for r in rows if ref]
    return out


def parity(results: list[dict]) -> list[dict]:
    """Per-step losses against the reference run at one global batch, over the steps that lie wholly
    inside the first epoch (the logged epoch is below 1 in both runs). Past an epoch's end they may part:
    its last, short global batch is split unevenly, and Accelerate pads a short per-rank batch with
    rows from the epoch's start."""
    out = []
    for r, one in _pairs(results):
        pairs = [(x, y) for x, y, ex, ey in zip(r["all_losses"], one["all_losses"], r.get("all_epochs") or [],
                                               one.get("all_epochs") or [])
                 if ex is not None and ey is not None and ex < 1 and ey < 1]
        worst = max((abs(x - y) / max(1.0, abs(y)) for x, y in pairs), default=None)
        out.append({"run": r["run"], "gpus": r["gpus"], "reference": [one["run"], one["gpus"]], "steps": len(pairs),
                    "max_rel_diff": worst, "global_batch_same": _global_batch(r) == _global_batch(one),
                    "match": len(pairs) >= MIN_PARITY_STEPS and worst <= PARITY_RTOL})
    return out


def ddp_parity(results: list[dict]) -> list[dict]:
    """lora_ddp at K GPUs against 1 GPU (parity's rows for that run)."""
    return [p for p in parity(results) if p["run"] == "lora_ddp"]


def scaling(results: list[dict]) -> None:
    """Per-GPU throughput relative to the same run at its smallest GPU count."""
    for name in RUNS:
        rows = sorted((r for r in results if r["run"] == name and r.get("tokens_per_s_per_gpu")), key=lambda r: r["gpus"])
        for r in rows:
            r["scaling_efficiency"] = round(r["tokens_per_s_per_gpu"] / rows[0]["tokens_per_s_per_gpu"], 3)
            r["efficiency_against_gpus"] = rows[0]["gpus"]


def cross_check(results: list[dict]) -> dict | None:
    acc = next((r for r in results if r["run"] == "accelerate"), None)
    ref = next((r for r in results if r["run"] == CROSS_CHECK[0] and r["gpus"] == (acc or {}).get("gpus")), None)
    if not acc or not ref:
        return None
    a, b = acc["first_losses"], ref["first_losses"]
    same = bool(a) and len(a) == len(b) and all(abs(x - y) <= 1e-3 * max(1.0, abs(y)) for x, y in zip(a, b))
    return {"gpus": acc["gpus"], "accelerate_launch": a, "runner_launch": b, "same_first_losses": same}


def markdown(report: dict) -> str:
    lines = [f"# Multi-GPU benchmark ({report['device']}, {report['date']})", "",
             "versions: " + ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items() if v), "",
             "| run | GPUs | wrapper | tokens/s per GPU | tokens/s total | peak reserved GiB per GPU (max; CPU: RSS) "
             "| scaling eff. (vs GPUs) | saved result on one GPU | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        memory = r.get("peak_reserved_gib_max") if r.get("peak_reserved_gib_max") is not None else r.get("peak_rss_gib_max")
        eff = f"{r['scaling_efficiency']} ({r['efficiency_against_gpus']})" if r.get("scaling_efficiency") else ""
        lines.append(f"| {r['run']} | {r['gpus']} | {'FSDP2' if r.get('fsdp2') else r.get('wrapper')} | "
                     f"{r.get('tokens_per_s_per_gpu')} | {r.get('tokens_per_s_total')} | {memory} | "
                     f"{eff} | {(r.get('reload') or '')[:40]} | {r['status']} |")
    check = report.get("cross_check")
    if check:
        lines += ["", f"accelerate launch vs runner launch at {check['gpus']} GPU(s), first losses: "
                      f"{check['accelerate_launch']} vs {check['runner_launch']}: "
                      f"{'same' if check['same_first_losses'] else 'DIFFERENT'}"]
    for p in report.get("parity", []):
        ref_run, ref_gpus = p["reference"]
        against = (f"{ref_gpus} GPU{'s' * (ref_gpus != 1)}" if ref_run == p["run"]
                   else f"{ref_run} at {ref_gpus} GPU{'s' * (ref_gpus != 1)}")
        lines += ["", f"{p['run']} at {p['gpus']} GPUs vs {against}, same global batch: {p['steps']} per-step losses "
                      f"of the first epoch, max relative difference {p['max_rel_diff'] or 0:.2e} (tolerance "
                      f"{PARITY_RTOL:g}): {'match' if p['match'] else 'DIFFERENT'}"
                      + ("" if p["global_batch_same"] else " (global batches differ: not comparable)")]
    return "\n".join(lines) + "\n"


def write_report(out: Path, stem: str, gpus: int, smoke: bool, results: list[dict]) -> dict:
    import probe
    import torch
    from report import repo_relative

    rows = merged(out / f"{stem}.json", results)
    scaling(rows)
    report = {"date": datetime.date.today().isoformat(), "smoke": smoke, "gpus": gpus,
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "versions": probe.versions(), "results": rows, "cross_check": cross_check(rows), "parity": parity(rows)}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(repo_relative(json.dumps(report, indent=1)))
    (out / f"{stem}.md").write_text(markdown(report))
    return report


def merged(previous: Path, results: list[dict]) -> list[dict]:
    """Earlier calls' runs (--only splits the matrix over several calls), replaced where run again."""
    done = {(r["run"], r["gpus"]) for r in results}
    old = json.loads(previous.read_text())["results"] if previous.is_file() else []
    keep = [r for r in old if (r["run"], r["gpus"]) not in done]
    return sorted(keep + results, key=lambda r: (list(RUNS).index(r["run"]) if r["run"] in RUNS else 99, r["gpus"]))
