"""GRPO on a 1B-class model: runner against a hand-written TRL GRPOTrainer script, in the same launch,
each in its own process under bench/grpo_probe.py, both generating with transformers' continuous
batching. Writes OUT/grpo1b.json and OUT/grpo1b.md (one table row per side).

    python bench/grpo_bench.py [--smoke] [--out bench/results] [--steps WARMUP,MEASURE] [--data DIR] [--timeout S]

Measured over the timed steps (after WARMUP optimizer steps):
- generation tokens/s: completion tokens generated / seconds inside generation;
- training tokens/s: prompt + completion tokens of those steps / (step time - generation time);
- step time (mean), peak allocated / reserved accelerator memory (reset after the warm-up).
--smoke: a tiny Llama of the same family on the CPU, 4 completions of 8 tokens, a few steps: the
code path of both sides, continuous batching included."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import catalog  # noqa: E402
import modeldir  # noqa: E402

SCENARIO = "grpo1b"


def sides(model: Path, data: Path, steps: int, smoke: bool, work: Path, length: int | None = None) -> dict:
    cfg = BENCH / "scenarios" / f"{SCENARIO}.yaml"
    runner = ["-m", "runner", "train", str(cfg), f"model.path={model}", f"datasets.0.path={data / 'alpaca_en_demo.json'}",
              f"training.max_steps={steps}", f"data.cache_dir={work / 'cache'}", f"output.dir={work / 'runner-run'}"]
    if smoke:
        runner += ["model.random_init=false", "model.dtype=float32", "training.precision=fp32",
                   "training.micro_batch_size=4", "training.grpo.num_generations=4",
                   "training.grpo.max_completion_length=8",
                   "sequence.max_length=256", "datasets.0.num_samples=16"]
    baseline = [str(BENCH / "baselines" / "grpo1b_baseline.py"), str(model), str(data / "alpaca_en_demo.json"),
                str(steps)] + (["--smoke"] if smoke else [])
    if length:
        runner.append(f"training.grpo.max_completion_length={length}")
        baseline += ["--completion-length", str(length)]
    return {"runner": runner, "baseline": baseline}


def measure(probe: dict, warmup: int) -> dict:
    """Tokens/s of generation and training over the optimizer steps after the warm-up."""
    steps = probe.get("step_times_s") or []
    timed = steps[warmup - 1:] if warmup >= 1 else steps  # step_times_s[i] ends at step i + 2
    gens = probe.get("generations") or []
    # One generation per optimizer step (steps_per_generation = gradient_accumulation = 1).
    # step_times_s[j] is step j + 2, whose generation is gens[j + 1]
    timed_gens = gens[warmup: warmup + len(timed)]
    if not timed or not timed_gens:
        return {"status": "no timed window", "steps_timed": len(timed)}
    gen_s = sum(g["s"] for g in timed_gens)
    completion = sum(g["completion_tokens"] for g in timed_gens)
    total = sum(g["prompt_tokens"] + g["completion_tokens"] for g in timed_gens)
    train_s = max(sum(timed) - gen_s, 1e-9)
    return {"status": "ok", "steps_timed": len(timed), "step_s_mean": round(sum(timed) / len(timed), 4),
            "generation_s": round(gen_s, 3), "generation_tokens_per_s": round(completion / gen_s, 1),
            "training_tokens_per_s": round(total / train_s, 1), "completion_tokens": completion,
            "peak_allocated_gib": probe.get("peak_allocated_gib"), "peak_reserved_gib": probe.get("peak_reserved_gib"),
            "peak_rss_gib": probe.get("peak_rss_gib"), "exit_code": probe.get("exit_code")}


def run_side(name: str, target: list, warmup: int, work: Path, env: dict, timeout: float | None = None) -> dict:
    out = work / f"{SCENARIO}-{name}.probe.json"
    log = work / f"{SCENARIO}-{name}.log"
    command = [sys.executable, str(BENCH / "grpo_probe.py"), "--out", str(out), "--warmup", str(warmup), *target]
    started = time.time()
    with open(log, "w") as fh:
        try:
            code = subprocess.run(command, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return {"command": " ".join(command), "status": "timeout", "wall_s": round(time.time() - started, 1),
                    "log_tail": log.read_text()[-3000:]}
    result = {"command": " ".join(command), "exit_code": code, "wall_s": round(time.time() - started, 1)}
    if not out.is_file():
        return {**result, "status": "failed", "log_tail": log.read_text()[-3000:]}
    probe = json.loads(out.read_text())
    result.update(measure(probe, warmup), device=probe.get("device"), versions=probe.get("versions"))
    if code != 0:
        result.update(status="failed", log_tail=log.read_text()[-3000:])
    return result


def row(name: str, r: dict) -> str:
    def f(key):
        return "-" if r.get(key) is None else str(r[key])
    return (f"| {SCENARIO} | {name} | {r.get('status')} | {f('generation_tokens_per_s')} | {f('training_tokens_per_s')} "
            f"| {f('step_s_mean')} | {f('peak_allocated_gib')} | {f('peak_reserved_gib')} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=str(BENCH / "results"))
    parser.add_argument("--work", default=str(REPO / ".runner_cache" / "bench"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--steps", default=None, help="WARMUP,MEASURE optimizer steps (default 2,6; --smoke 1,2)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per side (a side past it: status timeout)")
    parser.add_argument("--completion-length", type=int, default=None,
                        help="max completion tokens on both sides (default: the scenario's 256; --smoke 8)")
    args = parser.parse_args(argv)
    warmup, timed = map(int, (args.steps or ("1,2" if args.smoke else "2,6")).split(","))
    work, out, data = Path(args.work).resolve(), Path(args.out).resolve(), Path(args.data).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    shape = dict(catalog.TINY) if args.smoke else dict(catalog.SHAPES["llama32_1b"])
    model = modeldir.build(shape, work / ("models-smoke" if args.smoke else "models") / "llama32_1b", data, args.smoke)
    # This checkout first, then what the caller's PYTHONPATH holds (a GPU box's wheels: trl, datasets).
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    results = {}
    name = f"{SCENARIO}{'.smoke' if args.smoke else ''}"
    for side, target in sides(model, data, warmup + timed + 1, args.smoke, work,
                                     args.completion_length).items():
        results[side] = run_side(side, target, warmup, work, env, args.timeout)
        (out / f"{name}.json").write_text(json.dumps(results, indent=1))  # what is measured survives a cut-off call
    runner, base = results["runner"], results["baseline"]
    if runner.get("status") == "ok" and base.get("status") == "ok":
        results["runner_vs_baseline"] = {
            "generation": round(runner["generation_tokens_per_s"] / base["generation_tokens_per_s"], 3),
            "training": round(runner["training_tokens_per_s"] / base["training_tokens_per_s"], 3)}
    results.update(scenario=SCENARIO, smoke=args.smoke, warmup=warmup, timed=timed,
                   max_completion_length=args.completion_length or (8 if args.smoke else 256),
                   date=time.strftime("%Y-%m-%d %H:%M:%S"))
    (out / f"{name}.json").write_text(json.dumps(results, indent=1))
    header = ("| scenario | side | status | generation tok/s | training tok/s | step s | peak alloc GiB | "
              "peak reserved GiB |\n|---|---|---|---|---|---|---|---|")
    table = "\n".join([header, row("runner", runner), row("baseline (TRL GRPOTrainer)", base)])
    (out / f"{name}.md").write_text(table + "\n")
    print(table)
    return 0 if all(r.get("status") == "ok" for r in (runner, base)) else 1


if __name__ == "__main__":
    sys.exit(main())
