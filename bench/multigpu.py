"""Multi-GPU benchmark (issue 6), run unchanged on 2 to 8 GPUs of one host, all through `runner launch`:

    python bench/multigpu.py [--gpus N] [--only RUN[@K] ...] [--out bench/results] [--work DIR]
    python bench/multigpu.py --dry-run      # CPU: plan every launch, print the commands, start nothing
    python bench/multigpu.py --smoke        # CPU: tiny model, 1-2 processes, every code path

Runs (Llama-3-8B shape, random init, bf16, rows of 2048 packed from wiki_demo, bench/scenarios/
lora8b_packed.yaml, micro batch 4):
  lora_ddp   LoRA r16 all-linear, backend auto (single at 1, DDP above), at 1, 2 and N GPUs, with one
             global batch for all sizes (gradient accumulation N/K at K GPUs): the per-step losses of
             the first epoch at K GPUs must follow those at 1 GPU (bf16 tolerance, `ddp_parity`). Past
             an epoch's end they may part: its last, short global batch is split unevenly, and
             Accelerate pads a short per-rank batch with rows from the epoch's start
  full_fsdp2 full fine-tune, FSDP2 (reshard after forward), gradient checkpointing, at 2 and N GPUs
  full_zero3 full fine-tune, DeepSpeed ZeRO-3, gradient checkpointing, at 2 and N GPUs
  accelerate one short `accelerate launch --multi_gpu -m runner train` run beside lora_ddp@2: its
             first losses must equal the `runner launch` run's (two ways in, one behaviour)
After each run its saved result (adapter or full model) is loaded on one GPU and its logits checked
finite (bench/accept.py's reload check), in a process of its own that sees only GPU 0.

Each worker is measured from inside (multigpu_site/sitecustomize.py loads `install_rank_probe`):
optimizer-step times on CUDA events (bench/probe.py's clock), the tokens each rank fed its model in
the timed steps, peak allocated / reserved memory after the warm-up, and the wrapper the model got.
Written after every run (a call cut short keeps what finished): OUT/multigpu.json (every run, per
rank) and OUT/multigpu.md (tokens/s per GPU, peak memory per GPU, scaling efficiency = tokens/s per
GPU at K / the same at the run's smallest K).
"""
from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SCENARIO = HERE / "scenarios" / "lora8b_packed.yaml"
SITE = HERE / "multigpu_site"
RANK_DIR_ENV = "RUNNER_BENCH_RANK_DIR"
WARMUP_ENV = "RUNNER_BENCH_WARMUP"
FULL = ["adapter.kind=full", "training.learning_rate=1e-5", "training.optimizer=adamw_torch_fused",
        "training.gradient_checkpointing=true"]  # 4 x 2048 tokens of 8B activations (~70 GiB) need recomputation
RUNS = {  # name -> (overrides, world sizes: "1", "2", "N")
    # lr 2e-4: the loss falls steadily (12.6 -> 9 in 25 steps), so per-step losses that follow the
    # 1-GPU curve say the gradients were averaged right. (At 1e-3 it spiked at step 4 and from there two
    # launches of one config parted by 2%: chaos, not a check.)
    "lora_ddp": (["distributed.backend=auto", "training.learning_rate=2e-4"],
                 ("1", "2", "N")),
    "full_fsdp2": (FULL + ["distributed.backend=fsdp", "distributed.fsdp.reshard_after_forward=true"], ("2", "N")),
    "full_zero3": (FULL + ["distributed.backend=deepspeed", "distributed.deepspeed.zero_stage=3"], ("2", "N")),
}
# The wrapper each run must really get (Accelerate falls back to DDP for FSDP without a word on CPU).
EXPECTED_WRAPPER = {"full_fsdp2": "FSDP2", "full_zero3": "DeepSpeedEngine", "lora_ddp": "DistributedDataParallel"}
CROSS_CHECK = ("lora_ddp", 2)  # the run the accelerate-launch run must reproduce
FIRST_LOSSES = 3
PARITY_RTOL = 5e-3  # bf16: the gradients are summed in another order across ranks
MIN_PARITY_STEPS = 3


# --- inside each worker ----------------------------------------------------------------------------

def install_rank_probe() -> None:
    """Step clock, token count and peak memory of this rank, written to $RUNNER_BENCH_RANK_DIR at exit."""
    import accelerate
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    sys.path.insert(0, str(HERE))
    from probe import StepClock

    rank = int(os.environ.get("RANK", "0"))
    clock = StepClock(int(os.environ.get(WARMUP_ENV, "5")))
    tokens: list[int] = [0]  # tokens fed since the last optimizer step
    per_step: list[int] = []
    seen: dict = {}
    register_optimizer_step_post_hook(lambda opt, a, k: (clock.hook(opt, a, k), per_step.append(tokens[0]),
                                                         tokens.__setitem__(0, 0)))
    real_prepare = accelerate.Accelerator.prepare

    def prepare(self, *objects, **kwargs):
        result = real_prepare(self, *objects, **kwargs)
        for obj in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(obj, torch.nn.Module) and "wrapper" not in seen:
                from torch.distributed.fsdp import FSDPModule

                seen.update(wrapper=type(obj).__name__, fsdp2=isinstance(obj, FSDPModule),
                            distributed_type=str(self.distributed_type))

                # At the input embedding: every path reaches it (the chunked loss calls the decoder,
                # not the wrapper). The bench's rows are packed, so input ids are all real tokens.
                embedding = next(m for m in obj.modules() if isinstance(m, torch.nn.Embedding))
                embedding.register_forward_pre_hook(lambda module, args: tokens.__setitem__(0, tokens[0] + args[0].numel()))
        return result

    accelerate.Accelerator.prepare = prepare

    def write():
        out = Path(os.environ[RANK_DIR_ENV])
        out.mkdir(parents=True, exist_ok=True)
        times = clock.step_times()
        record = {"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", "1")), "device": clock.device(),
                  "warmup": clock.warmup, "step_times_s": times, "tokens_per_step": per_step, **seen, **clock.memory()}
        (out / f"rank{rank}.json").write_text(json.dumps(record, indent=1))

    atexit.register(write)


# --- the driver ----------------------------------------------------------------------------------

def plan_runs(gpus: int, only: list[str], cpu: bool = False) -> list[tuple[str, int]]:
    chosen = []
    for name, (_, worlds) in RUNS.items():
        for w in dict.fromkeys(gpus if w == "N" else int(w) for w in worlds):
            if w <= gpus and (not only or name in only or f"{name}@{w}" in only):
                chosen.append((name, w))
    if not only or "accelerate" in only:
        # On CPU `accelerate launch --num_processes 2` starts one process: compare at one there.
        chosen.append(("accelerate", CROSS_CHECK[1] if gpus >= CROSS_CHECK[1] and not cpu else 1))
    return chosen


def overrides(name: str, world: int, ctx: dict) -> list[str]:
    base = RUNS["lora_ddp" if name == "accelerate" else name][0]
    out = [f"model.path={ctx['model_dir']}", f"datasets.0.path={ctx['data_dir'] / 'wiki_demo.txt'}",
           f"data.cache_dir={ctx['work'] / 'cache'}", f"output.dir={ctx['work'] / 'runs' / f'{name}-{world}'}",
           "output.overwrite=true", "output.resume=never", "output.save_every=null",
           f"training.max_steps={ctx['warmup'] + ctx['steps']}", "tracking.log_every=1", "tracking.progress_bar=false",
           "tracking.wandb=null", *base]
    if ctx["smoke"]:
        sys.path.insert(0, str(HERE))
        import catalog

        out += catalog.smoke_runner_overrides(ctx["cpu"])
    if name in ("lora_ddp", "accelerate"):  # one global batch at every size: DDP must reproduce 1 GPU
        out.append(f"training.gradient_accumulation={accumulation(world, ctx['gpus'])}")
    return out


def accumulation(world: int, gpus: int) -> int:
    return max(1, gpus // world)


def command(name: str, world: int, ctx: dict) -> list[str]:
    ov = overrides(name, world, ctx)
    if name == "accelerate":
        flags = (["--cpu"] if ctx["cpu"] else ["--multi_gpu"] if world > 1 else []) + [f"--num_processes={world}"]
        return [sys.executable, "-m", "accelerate.commands.launch", *flags, f"--main_process_port={ctx['port']}",
                "-m", "runner", "train", str(SCENARIO), *ov]
    return [sys.executable, "-m", "runner", "launch", str(SCENARIO), *ov, "--num-processes", str(world),
            *(["--cpu"] if ctx["cpu"] else [])]


def child_env(ctx: dict, rank_dir: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SITE), str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update({RANK_DIR_ENV: str(rank_dir), WARMUP_ENV: str(ctx["warmup"]), "MASTER_PORT": str(ctx["port"]),
                "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
                # runner launch sets these for its workers; the accelerate run needs them too
                "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"})
    if ctx["cpu"]:
        env["OMP_NUM_THREADS"] = "1"
    return env


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
    """tokens/s per GPU over the timed steps (after `warmup`), per rank and averaged; peak memory."""
    per_rank = []
    for r in ranks:
        timed = [(t, n) for t, n in training_steps(r["step_times_s"], r["tokens_per_step"])[warmup:] if t is not None]
        n = len(timed)
        secs = sum(t for t, _ in timed)
        per_rank.append({"rank": r["rank"], "tokens_per_s": round(sum(k for _, k in timed) / secs, 1) if secs else None,
                         "peak_allocated_gib": r.get("peak_allocated_gib"), "peak_reserved_gib": r.get("peak_reserved_gib"),
                         "peak_rss_gib": r.get("peak_rss_gib"), "timed_steps": n})
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


def run_one(name: str, world: int, ctx: dict) -> dict:
    rank_dir = ctx["work"] / "ranks" / f"{name}-{world}"
    for old in rank_dir.glob("rank*.json"):
        old.unlink()
    cmd = command(name, world, ctx)
    log = ctx["work"] / f"{name}-{world}.log"
    started = datetime.datetime.now()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(ctx, rank_dir), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=ctx.get("run_timeout"))
        except subprocess.TimeoutExpired:  # the launcher and every worker: they hold the GPUs
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
            fh.write(f"\nbench: killed after {ctx['run_timeout']} s\n")
    ranks = [json.loads(p.read_text()) for p in sorted(rank_dir.glob("rank*.json"))]
    rows = train_rows(ctx["work"] / "runs" / f"{name}-{world}")
    out = {"run": name, "gpus": world, "exit_code": code, "command": shlex.join(cmd), "started": started.isoformat(),
           "status": "ok" if code == 0 else "failed", **summarise(ranks, ctx["warmup"]),
           "first_losses": [r["loss"] for r in rows[:FIRST_LOSSES]]}
    want = EXPECTED_WRAPPER.get(name) if world > 1 else None
    got = "FSDP2" if out.get("fsdp2") else out.get("wrapper")
    if code == 0 and want and got != want:
        out["status"] = f"wrong wrapper: {got}, not {want}"
    if code == 0 and len(ranks) != world:
        out["status"] = f"{len(ranks)} of {world} ranks reported"
    if code != 0:
        out["log_tail"] = log.read_text()[-3000:]
    elif name != "accelerate":
        out["reload"] = reload_on_one_gpu(ctx["work"] / "runs" / f"{name}-{world}", ctx)
        if out["reload"] != "ok" and out["status"] == "ok":
            out["status"] = "saved result does not load on one GPU"
    if name in ("lora_ddp", "accelerate"):
        out["gradient_accumulation"] = accumulation(world, ctx["gpus"])
    out["all_losses"] = [r["loss"] for r in rows]
    out["all_epochs"] = [r.get("epoch") for r in rows]
    return out


def reload_on_one_gpu(run_dir: Path, ctx: dict) -> str:
    from accept import reload  # bench/ is on sys.path (main)

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if not ctx["cpu"]:
        env["CUDA_VISIBLE_DEVICES"] = "0"
    return reload(run_dir, env=env)


def ddp_parity(results: list[dict]) -> list[dict]:
    """Per-step losses of lora_ddp at K GPUs against 1 GPU, same global batch, over the steps that lie
    wholly inside the first epoch (the logged epoch is below 1 in both runs)."""
    one = next((r for r in results if r["run"] == "lora_ddp" and r["gpus"] == 1 and r.get("all_losses")), None)
    out = []
    for r in results:
        if r["run"] != "lora_ddp" or r["gpus"] == 1 or not one or not r.get("all_losses"):
            continue
        pairs = [(x, y) for x, y, ex, ey in zip(r["all_losses"], one["all_losses"], r.get("all_epochs") or [],
                                               one.get("all_epochs") or [])
                 if ex is not None and ey is not None and ex < 1 and ey < 1]
        worst = max((abs(x - y) / max(1.0, abs(y)) for x, y in pairs), default=None)
        out.append({"gpus": r["gpus"], "steps": len(pairs), "max_rel_diff": worst,
                    "global_batch_same": r.get("gradient_accumulation", 0) * r["gpus"] == one.get("gradient_accumulation"),
                    "match": len(pairs) >= MIN_PARITY_STEPS and worst <= PARITY_RTOL})
    return out


def scaling(results: list[dict]) -> None:
    """Per-GPU throughput relative to the same run at its smallest GPU count."""
    for name in RUNS:
        rows = sorted((r for r in results if r["run"] == name and r.get("tokens_per_s_per_gpu")), key=lambda r: r["gpus"])
        for r in rows:
            r["scaling_efficiency"] = round(r["tokens_per_s_per_gpu"] / rows[0]["tokens_per_s_per_gpu"], 3)


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
             "| scaling eff. | saved result on one GPU | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        memory = r.get("peak_reserved_gib_max") if r.get("peak_reserved_gib_max") is not None else r.get("peak_rss_gib_max")
        lines.append(f"| {r['run']} | {r['gpus']} | {'FSDP2' if r.get('fsdp2') else r.get('wrapper')} | "
                     f"{r.get('tokens_per_s_per_gpu')} | {r.get('tokens_per_s_total')} | {memory} | "
                     f"{r.get('scaling_efficiency', '')} | {(r.get('reload') or '')[:40]} | {r['status']} |")
    check = report.get("cross_check")
    if check:
        lines += ["", f"accelerate launch vs runner launch at {check['gpus']} GPU(s), first losses: "
                      f"{check['accelerate_launch']} vs {check['runner_launch']}: "
                      f"{'same' if check['same_first_losses'] else 'DIFFERENT'}"]
    for p in report.get("ddp_parity", []):
        lines += ["", f"lora_ddp at {p['gpus']} GPUs vs 1 GPU, same global batch: {p['steps']} per-step losses of the first epoch, "
                      f"max relative difference {p['max_rel_diff'] or 0:.2e} (tolerance {PARITY_RTOL:g}): "
                      f"{'match' if p['match'] else 'DIFFERENT'}"
                      + ("" if p["global_batch_same"] else " (global batches differ: not comparable)")]
    return "\n".join(lines) + "\n"


def dry_run(ctx: dict, chosen) -> int:
    """Plan every launch as on a GPU host with ctx['gpus'] GPUs (the planner sees CUDA_VISIBLE_DEVICES)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(ctx["gpus"]))), "MASTER_PORT": str(ctx["port"])}
    planned, failures = [], 0
    for name, world in chosen:
        cmd = command(name, world, ctx)
        if name == "accelerate":
            print(f"## {name}@{world}\n{shlex.join(cmd)}\n")
            planned.append({"run": name, "gpus": world, "command": shlex.join(cmd)})
            continue
        out = subprocess.run([*cmd, "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True)
        failures += out.returncode != 0
        print(f"## {name}@{world} (exit {out.returncode})\n{out.stdout}{out.stderr if out.returncode else ''}")
        launch_line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
        planned.append({"run": name, "gpus": world, "exit_code": out.returncode, "runner_launch": shlex.join(cmd),
                        "launches": launch_line})
    (ctx["out"]).mkdir(parents=True, exist_ok=True)
    (ctx["out"] / "multigpu-dry-run.json").write_text(json.dumps({"gpus": ctx["gpus"], "planned": planned}, indent=1))
    return 1 if failures else 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, help="N (default: the GPUs visible; 8 in --dry-run, 2 in --smoke)")
    p.add_argument("--only", nargs="*", default=[], help="runs to do: NAME or NAME@K (default: all)")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="optimizer steps before the timed window")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--work", type=Path, default=REPO / ".runner_cache" / "bench-multigpu")
    p.add_argument("--data", type=Path, help="shared data folder (default: ./shared/data, else ../shared/data)")
    p.add_argument("--port", type=int, default=29611)
    p.add_argument("--run-timeout", type=float, help="seconds one launch may take before it is killed")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--smoke", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(HERE))
    import catalog
    import modeldir

    data = args.data or next((d for d in (REPO / "shared" / "data", REPO.parent / "shared" / "data") if d.is_dir()),
                             REPO.parent / "shared" / "data")
    cpu = args.smoke  # --dry-run plans as on the GPU host
    if not args.dry_run and not args.smoke:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: use --dry-run or --smoke on a CPU", file=sys.stderr)
            return 2
    gpus = args.gpus or (8 if args.dry_run else 2 if args.smoke else __import__("torch").cuda.device_count())
    work = args.work.resolve()
    shape = ({**catalog.SHAPES["llama3_8b"], **catalog.TINY}) if args.smoke else catalog.SHAPES["llama3_8b"]
    model_dir = modeldir.build(shape, work / ("model-smoke" if args.smoke else "model-8b"), data, smoke=args.smoke)
    ctx = {"model_dir": model_dir, "data_dir": data.resolve(), "work": work, "smoke": args.smoke, "cpu": cpu,
           "steps": 2 if args.smoke else args.steps, "warmup": 2 if args.smoke else args.warmup,
           "port": args.port, "gpus": gpus, "out": args.out,
           "run_timeout": args.run_timeout}
    chosen = plan_runs(gpus, args.only, cpu)
    if args.smoke:
        chosen = [(n, w) for n, w in chosen if not (n == "full_zero3" and not _has("deepspeed"))]
    if args.dry_run:
        return dry_run(ctx, chosen)
    stem = "multigpu-smoke" if args.smoke else "multigpu"
    results, report = [], {}
    for i, (name, world) in enumerate(chosen):
        ctx["port"] = args.port + i  # a fresh rendezvous port per run
        print(f"running {name} on {world} GPU(s)...", file=sys.stderr, flush=True)
        results.append(run_one(name, world, ctx))
        print(json.dumps({k: v for k, v in results[-1].items() if k not in ("per_rank", "log_tail", "all_losses")}),
              flush=True)
        report = write_report(args.out, stem, gpus, args.smoke, results)
    print(markdown(report))
    failed = [r for r in report["results"] if r["status"] != "ok"]
    check = report["cross_check"]
    parity_bad = [p for p in report["ddp_parity"] if p["global_batch_same"] and not p["match"]]
    return 1 if failed or parity_bad or (check and not check["same_first_losses"]) else 0


def write_report(out: Path, stem: str, gpus: int, smoke: bool, results: list[dict]) -> dict:
    import probe
    import torch
    from report import repo_relative

    rows = merged(out / f"{stem}.json", results)
    scaling(rows)
    report = {"date": datetime.date.today().isoformat(), "smoke": smoke, "gpus": gpus,
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "versions": probe.versions(), "results": rows, "cross_check": cross_check(rows), "ddp_parity": ddp_parity(rows)}
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


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
