"""GPU benchmark harness (issue 8): one scenario through runner and, in the same launch sequence, its
hand-written baseline; a JSON result and a markdown row per scenario.

    python bench/harness.py SCENARIO|all [--smoke] [--out bench/results] [--baselines DIR] [--data DIR]
    python bench/harness.py SCENARIO --side runner --variant NAME --set training.micro_batch_size=2 ...

Each side runs in its own process under bench/probe.py (same step clock, fresh memory counters):
- runner: `python -m runner train bench/scenarios/SCENARIO.yaml` + overrides (model dir, data dir,
  steps, output). Real tokens come from the run's metrics.jsonl (runner counts input ids, never
  padding); the timed window is the steps after the warm-up, on the probe's clock.
- baseline: the shared scripts (../shared/baselines or ./shared/baselines) run unchanged with their
  folder as working directory; bench/baselines/*.py for full1b and dpo8b. Their printed tokens/s is
  taken as is; the probe adds peak reserved memory and step times.
--overlap starts the baseline first: its CPU setup runs while runner trains, and its first CUDA use
waits until runner's process has ended (qlora8b's baseline builds the 8B model on the CPU for ~7 min);
a baseline seen holding GPU memory before runner ended is reported `overlapped`, not measured.
--smoke shrinks every scenario to a tiny model of the same family (seconds on a CPU). The shared
baselines hard-code CUDA and the 8B shape: on a machine without CUDA they are reported as skipped.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import catalog  # noqa: E402
import flops  # noqa: E402
import report  # noqa: E402
from sides import child_env, cuda_available, failed, first_existing, measured_side, run_probed  # noqa: E402

SMOKE_WARMUP, SMOKE_MEASURE = 2, 2


# --- runner side -------------------------------------------------------------------------------

def run_dir_of(scenario, work: Path, smoke: bool) -> Path:
    return work / "runs" / (scenario.name + ("-smoke" if smoke else ""))


def runner_overrides(scenario, cfg_path: Path, model_dir: Path, data_dir: Path, work: Path, smoke: bool,
                     cpu: bool, warmup: int, measure: int) -> list[str]:
    import yaml

    raw = yaml.safe_load(cfg_path.read_text())
    out = [f"model.path={model_dir}", f"data.cache_dir={work / 'cache'}",
           f"output.dir={run_dir_of(scenario, work, smoke)}",
           "output.overwrite=true", "output.resume=never", "output.save_every=null",
           f"training.max_steps={warmup + measure}", f"tracking.log_every={warmup}", "tracking.progress_bar=false",
           "tracking.wandb=null"]
    for i, ds in enumerate(raw.get("datasets") or []):
        out.append(f"datasets.{i}.path={data_dir / Path(ds['path']).name}")
    if smoke:
        out += catalog.smoke_runner_overrides(cpu) + [f"{k}={v}" for k, v in scenario.smoke.items()]
    return out


def attention_span_of_run(cfg_path: Path, overrides: list[str]) -> float | None:
    """Token-weighted mean sample length of the run's tokenized data (read from runner's cache)."""
    sys.path.insert(0, str(REPO))
    from runner.data import build_datasets
    from runner.plan.resolve import make_plan

    plan = make_plan(str(cfg_path), overrides)
    data = build_datasets(plan, tokenizer=None, progress=False).train
    cols = data.column_names
    lengths: list[int] = []
    if "prompt_input_ids" in cols and "chosen_input_ids" in cols:
        for row in data:
            p = len(row["prompt_input_ids"])
            lengths += [p + len(row["chosen_input_ids"]), p + len(row["rejected_input_ids"])]
    elif "position_ids" in cols:
        for positions in data["position_ids"]:
            starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
            lengths += [b - a for a, b in zip(starts, starts[1:])]
    else:
        lengths = [len(ids) for ids in data["input_ids"]]
    return flops.token_weighted_span(lengths)


def run_runner(scenario, ctx: dict) -> dict:
    cfg = HERE / "scenarios" / scenario.config
    warmup, measure = (SMOKE_WARMUP, SMOKE_MEASURE) if ctx["smoke"] else (scenario.warmup, scenario.measure)
    overrides = runner_overrides(scenario, cfg, ctx["model_dir"], ctx["data_dir"], ctx["work"], ctx["smoke"],
                                 not ctx["cuda"], warmup, measure) + list(ctx.get("extra_overrides") or [])
    metrics = run_dir_of(scenario, ctx["work"], ctx["smoke"]) / "metrics.jsonl"
    profile = None
    if ctx.get("profile"):
        first, last = ctx["profile"]
        profile = {"BENCH_PROFILE": f"{first},{last},{ctx['out'] / (scenario.name + '-profile.txt')}"}
    probe, output = run_probed(["-m", "runner", "train", str(cfg), *overrides], probe_out=ctx["work"] / "probe-runner.json",
                               warmup=warmup, log=ctx["work"] / f"{scenario.name}-runner.log", env=child_env(profile),
                               timeout=ctx["timeout"])
    side = {"command": f"runner train {cfg.relative_to(REPO)} " + " ".join(overrides), "warmup_steps": warmup,
            "timed_steps": measure}
    if probe.get("exit_code") or not metrics.is_file():
        return {**side, **failed("failed", output, probe)}
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    by_step = {r["step"]: r for r in rows if r.get("kind") == "train"}
    times = probe.get("step_times_s") or []
    window = times[warmup - 1:warmup + measure - 1]
    if warmup not in by_step or warmup + measure not in by_step or len(window) < measure:
        seen = measured_side(probe, times[warmup - 1:])  # what was measured still helps the reader
        seen.pop("_probe_versions", None)
        return {**side, **seen, **failed("no timed window", output, probe), "metrics_steps": sorted(by_step)}
    tokens = by_step[warmup + measure]["tokens"] - by_step[warmup]["tokens"]
    # runner's own figure, a cross-check of the probe's (the probe reset the counters at the warm-up's end)
    memory_mb = max((r.get("memory_mb") or 0) for s, r in by_step.items() if s > warmup)
    try:
        span = attention_span_of_run(cfg, overrides)
    except Exception as exc:  # the FLOP count is a derived figure: keep the measurement
        print(f"[harness] attention span of the runner data unknown: {exc}", file=sys.stderr)
        span = None
    result = {**side, "status": "ok", "tokens": tokens, "window_s": round(sum(window), 6),
              "tokens_per_s": round(tokens / sum(window), 1), "attn_ctx": span,
              "metrics_peak_memory_gib": round(memory_mb / 1024, 3),
              "metrics_tokens_per_s": [by_step[s].get("tokens_per_s") for s in sorted(by_step) if s > warmup],
              **measured_side(probe, window)}
    result.update(flops.useful_tflops(result["tokens_per_s"], ctx["shape"], scenario.work, span, ctx["peak_tflops"]))
    return result


# --- baseline side -----------------------------------------------------------------------------

def baseline_span(b, env: dict, reported: dict, baselines_dir: Path):
    if b.attn_ctx == "SEQ":
        return float(env["SEQ"])
    if b.attn_ctx == "alpaca":
        return flops.token_weighted_span(json.loads((baselines_dir / "alpaca_en_lengths.json").read_text()))
    if b.attn_ctx == "printed":
        return reported.get("attn_ctx")
    return float(b.attn_ctx) if b.attn_ctx else None


def run_baseline(scenario, ctx: dict, cuda_gate: Path | None = None) -> dict:
    b = scenario.baseline
    script = (ctx["baselines_dir"] / b.script) if b.shared else (HERE / b.script)
    side = {"script": str(script), "args": list(b.args)}
    if b.needs_cuda and not ctx["cuda"]:
        return {**side, "status": "skipped", "reason": "the script hard-codes CUDA; no GPU here"}
    if ctx["smoke"] and not b.smoke_runs:
        return {**side, "status": "skipped", "reason": "too slow for --smoke (builds the full model on the CPU)"}
    if not script.is_file():
        return {**side, "status": "missing", "reason": f"{script} not found (--baselines DIR)"}
    env = dict(b.env)
    if ctx["smoke"]:
        env.update(b.smoke_env)
    if not b.shared:
        env["MODEL_DIR"] = str(ctx["model_dir"])
        env["DATA"] = str(ctx["data_dir"] / "dpo_en_demo.json")
    side["env"] = {k: v for k, v in env.items() if k not in ("MODEL_DIR", "DATA")}
    probe_env = child_env({**env, "BENCH_CUDA_GATE": str(cuda_gate)} if cuda_gate else env)
    probe, output = run_probed([str(script), *b.args], probe_out=ctx["work"] / "probe-baseline.json",
                               warmup=b.warmup, log=ctx["work"] / f"{scenario.name}-baseline.log",
                               env=probe_env, cwd=script.parent, timeout=ctx["timeout"])
    if cuda_gate:
        side["_gate"] = {k: probe.get(k) for k in ("cuda_gate_waited_s", "cuda_first_alloc_at")}
    reported = _last_json_line(output)
    if probe.get("exit_code") or reported is None:
        return {**side, **failed("failed", output, probe)}
    times = (probe.get("step_times_s") or [])[b.warmup - 1:]
    span = baseline_span(b, env, reported, ctx["baselines_dir"])
    shape = ctx["shape"] if not b.shared else catalog.SHAPES[scenario.shape]
    result = {**side, "status": "ok", "reported": reported, "tokens_per_s": reported.get(b.tokens_key),
              "attn_ctx": span, **measured_side(probe, times)}
    if reported.get("padding_waste") is not None:
        result["padding_waste"] = reported["padding_waste"]
    result.update(flops.useful_tflops(result["tokens_per_s"], shape, scenario.work, span, ctx["peak_tflops"]))
    return result


def _last_json_line(output: str) -> dict | None:
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


# --- one scenario ------------------------------------------------------------------------------

def overlapped(scenario, ctx: dict) -> tuple[dict, dict]:
    """Both sides in one launch, the baseline started first: it does its CPU-side setup while runner
    trains, and its first CUDA use waits (probe.CudaGate) until runner's process has ended, so the
    two never share the GPU. For baselines whose setup outlasts a device call (qlora8b builds the 8B
    model on the CPU for ~7 minutes). The baseline's CPU work competes with runner's host threads:
    runner's figure can only come out lower for it."""
    ctx["work"].mkdir(parents=True, exist_ok=True)
    gate = ctx["work"] / "cuda-gate"
    gate.unlink(missing_ok=True)
    found: dict = {}
    thread = threading.Thread(target=lambda: found.update(base=run_baseline(scenario, ctx, cuda_gate=gate)))
    thread.start()
    try:
        run = run_runner(scenario, ctx)
    finally:
        runner_ended = time.time()
        gate.touch()
    thread.join()
    base = found.get("base") or {"status": "failed", "error": "the baseline thread returned nothing"}
    return run, overlap_verdict(base, runner_ended)


def overlap_verdict(base: dict, runner_ended: float) -> dict:
    """The baseline side of an --overlap launch, marked `overlapped` (not a measurement) when its
    process held GPU memory before runner's process had ended."""
    gate = base.pop("_gate", None) or {}
    first = gate.get("cuda_first_alloc_at")
    base["overlap"] = {"cuda_gate_waited_s": gate.get("cuda_gate_waited_s"),
                       "gpu_first_used_after_runner_s": None if first is None else round(first - runner_ended, 1)}
    if first is not None and first < runner_ended and base.get("status") == "ok":
        base.update(status="overlapped", reason=f"the baseline held GPU memory {runner_ended - first:.1f} s before "
                    "runner's process ended: the two shared the GPU; run the pair without --overlap")
    return base


def run_scenario(scenario, args) -> dict:
    import modeldir

    smoke = args.smoke
    shape = dict(catalog.SHAPES[scenario.shape], **(catalog.TINY if smoke else {}))
    tag = scenario.shape + ("-smoke" if smoke else "")
    model_dir = modeldir.build(shape, args.work / "models" / tag, args.data, smoke)
    ctx = {"smoke": smoke, "cuda": cuda_available(), "model_dir": model_dir, "data_dir": args.data,
           "work": args.work, "baselines_dir": args.baselines, "timeout": args.timeout,
           "peak_tflops": args.peak_tflops, "shape": modeldir.read_shape(model_dir), "extra_overrides": args.set,
           "profile": args.profile, "out": args.out}
    previous = _previous(args.out, scenario.name, smoke)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    versions = previous.get("versions")
    run = previous.get("runner", {"status": "not run"})
    base = previous.get("baseline", {"status": "not run"})
    if args.overlap:
        run, base = overlapped(scenario, ctx)
        versions = run.pop("_probe_versions", None) or base.get("_probe_versions") or versions
        base.pop("_probe_versions", None)
        return compose(scenario, ctx, args, started, versions, run, base)
    if args.side in ("both", "runner"):
        run = run_runner(scenario, ctx)
        versions = run.pop("_probe_versions", None) or versions
        if args.side == "both":  # a launch cut short still leaves the runner half on disk
            report.write_result(compose(scenario, ctx, args, started, versions, run, {"status": "pending"}), args.out)
    if args.side in ("both", "baseline"):
        base = run_baseline(scenario, ctx)
        versions = versions or base.get("_probe_versions")
        base.pop("_probe_versions", None)
    return compose(scenario, ctx, args, started, versions, run, base)


def compose(scenario, ctx, args, started, versions, run: dict, base: dict) -> dict:
    device = next((s.get("device") for s in (run, base) if s.get("status") == "ok" and s.get("device")), None)
    return {
        "scenario": scenario.name, "description": scenario.description, "smoke": ctx["smoke"], "date": started,
        "same_launch": args.side == "both", "device": device, "versions": versions,
        "model_shape": ctx["shape"], "work": scenario.work, "flops_formula": flops.formula(scenario.work),
        "peak_tflops_assumed": args.peak_tflops, "tokens": "real tokens only: padding never counted",
        "ratio_tokens_per_s": report.ratio(run.get("tokens_per_s"), base.get("tokens_per_s")),
        "ratio_peak_allocated": report.ratio(run.get("peak_allocated_gib"), base.get("peak_allocated_gib")),
        "runner": run, "baseline": base,
    }


def _previous(out: Path, name: str, smoke: bool) -> dict:
    path = out / f"{name}{'-smoke' if smoke else ''}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", help=f"one of: {', '.join(catalog.SCENARIOS)}, or all")
    p.add_argument("--smoke", action="store_true", help="tiny model, few steps (CPU-safe)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="folder for the JSON and .md results")
    p.add_argument("--baselines", type=Path, default=None,
                   help="shared baselines folder (default: ./shared/baselines, else ../shared/baselines)")
    p.add_argument("--data", type=Path, default=None,
                   help="shared data folder (default: ./shared/data, else ../shared/data)")
    p.add_argument("--work", type=Path, default=REPO / ".runner_cache" / "bench",
                   help="model dirs, data cache, runs and logs")
    p.add_argument("--side", choices=("both", "runner", "baseline"), default="both",
                   help="run one side only; the other is kept from the previous result file")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="dense bf16 peak for MFU (measured H100/H200)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per side")
    p.add_argument("--overlap", action="store_true", help="start the baseline first and let it set up on the "
                   "CPU while runner trains; its GPU use waits for runner's end (slow-setup baselines: qlora8b)")
    p.add_argument("--update-results", type=Path, default=None, help="replace the scenario's row in this table "
                   "(bench/RESULTS.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra runner override (repeatable); needs --variant")
    p.add_argument("--variant", default=None, help="name of a variant: results go to SCENARIO.VARIANT.json")
    p.add_argument("--steps", default=None, metavar="WARMUP,MEASURE", help="runner steps before and inside the "
                   "timed window (default: the scenario's)")
    p.add_argument("--profile", default=None, metavar="FIRST,LAST", help="torch.profiler over these runner "
                   "optimizer steps: OUT/SCENARIO-profile.txt (host vs device time, top kernels)")
    args = p.parse_args(argv)
    if args.profile:
        args.profile = tuple(int(x) for x in args.profile.split(","))
    if args.overlap and args.side != "both":
        p.error("--overlap runs both sides")
    if args.set and not args.variant:
        p.error("--set changes what runs: name it with --variant")
    if args.variant and args.update_results:
        p.error("--update-results takes the scenarios as defined, not variants")
    if args.steps:
        try:
            args.steps = tuple(int(x) for x in args.steps.split(","))
            assert len(args.steps) == 2 and min(args.steps) >= 1 and args.steps[1] % args.steps[0] == 0
        except (ValueError, AssertionError):
            p.error("--steps takes WARMUP,MEASURE: positive integers, MEASURE a multiple of WARMUP (the log cadence "
                    "that bounds the timed window)")
    if args.scenario != "all" and args.scenario not in catalog.SCENARIOS:
        p.error(f"unknown scenario {args.scenario!r}: use one of {', '.join(catalog.SCENARIOS)} or all")
    if args.smoke and args.update_results:
        p.error("--update-results takes full-size results only")
    args.baselines = (args.baselines or first_existing(REPO / "shared" / "baselines",
                                                      REPO.parent / "shared" / "baselines")).resolve()
    args.data = (args.data or first_existing(REPO / "shared" / "data", REPO.parent / "shared" / "data")).resolve()
    args.out, args.work = args.out.resolve(), args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    names = list(catalog.SCENARIOS) if args.scenario == "all" else [args.scenario]
    worst = 0
    for name in names:
        scenario = catalog.SCENARIOS[name]
        if args.variant:
            scenario = dataclasses.replace(scenario, name=f"{name}.{args.variant}")
        if args.steps:
            scenario = dataclasses.replace(scenario, warmup=args.steps[0], measure=args.steps[1])
        result = run_scenario(scenario, args)
        json_path, _ = report.write_result(result, args.out)
        if args.update_results:
            report.update_results_table(args.update_results, result)
        print(report.markdown_row(result))
        print(f"[harness] {json_path}", file=sys.stderr)
        for side in ("runner", "baseline"):
            if result[side].get("status") not in ("ok", "skipped", "not run"):
                worst = 1
                print(f"[harness] {name} {side}: {result[side].get('status')}: {result[side].get('error')}\n"
                      f"{result[side].get('log_tail', '')[-1500:]}", file=sys.stderr)
    return worst


if __name__ == "__main__":
    sys.exit(main())
