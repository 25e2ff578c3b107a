"""Multi-GPU benchmark (issues 6 and 25), run unchanged on 1 to 8 GPUs of one host, all through `runner launch`:

    python bench/multigpu.py [--gpus N] [--only RUN[@K] ...] [--out bench/results] [--work DIR]
    python bench/multigpu.py --only ckpt70b  # write the Llama-3-70B-shaped checkpoint (one call), nothing else
    python bench/multigpu.py --dry-run      # CPU: plan every launch, print the commands, start nothing
    python bench/multigpu.py --smoke        # CPU: tiny model, 1-2 processes, every path a CPU can run

Runs (bench/multigpu_matrix.py; Llama-3-8B shape, random init, bf16, rows of 2048 packed from
wiki_demo, bench/scenarios/lora8b_packed.yaml, micro batch 4, unless said):
  lora_ddp     LoRA r16 all-linear, backend auto (single at 1, DDP above), at 1, 2, 4, 8 GPUs
  full_fsdp2   full fine-tune, FSDP2 (reshard after forward), gradient checkpointing, at 1, 2, 4, 8
  full_zero3   full fine-tune, DeepSpeed ZeRO-3, gradient checkpointing, at 1, 2, 4, 8
               (these three keep one global batch at every size, gradient accumulation N/K at K GPUs:
               their per-step losses at K GPUs must follow those at their smallest K, `parity`)
  cp_128k      LoRA, FSDP2, context_parallel = N: one 131,072-token row a step split over all GPUs
  cp_short     the same on 4,096-token rows, and cp_short_ref: those rows whole on one GPU; the split
               run's per-step losses must follow the unsplit one's (`parity`)
  qlora70b     Llama-3-70B shape, LoRA on a 4-bit base (bf16 storage) sharded by FSDP2, at 2, 4, 8 GPUs;
               weights from bench/random_checkpoint.py (`--only ckpt70b` writes them, ~141 GB of disk)
  zero3_offload  full fine-tune under ZeRO-3 with optimizer and parameters offloaded to CPU, at 1 and 2
  accelerate   one short `accelerate launch --multi_gpu -m runner train` run beside lora_ddp@2: its
               first losses must equal the `runner launch` run's (two ways in, one behaviour)
After each run its saved result (adapter or full model) is loaded on one GPU and its logits checked
finite (bench/accept.py's reload check; a 4-bit base for qlora70b), in a process that sees only GPU 0.

Each worker is measured from inside (multigpu_site/sitecustomize.py loads `install_rank_probe`):
optimizer-step times on CUDA events (bench/probe.py's clock), the tokens each rank fed its model in
the timed steps, peak allocated / reserved memory after the warm-up, and the wrapper the model got.
Written after every run (a call cut short keeps what finished): OUT/multigpu.json (every run, per
rank) and OUT/multigpu.md (tokens/s per GPU, peak memory per GPU, scaling efficiency = tokens/s per
GPU at K / the same at the run's smallest K), by bench/multigpu_report.py.
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
import multigpu_matrix as matrix  # noqa: E402  (bench/ is this script's folder)
from multigpu_report import FIRST_LOSSES, markdown, summarise, train_rows, write_report  # noqa: E402

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

def command(name: str, world: int, ctx: dict) -> list[str]:
    ov = matrix.overrides(name, world, ctx)
    if name == "accelerate":
        flags = (["--cpu"] if ctx["cpu"] else ["--multi_gpu"] if world > 1 else []) + [f"--num_processes={world}"]
        return [sys.executable, "-m", "accelerate.commands.launch", *flags, f"--main_process_port={ctx['port']}",
                "-m", "runner", "train", str(SCENARIO), *ov]
    return [sys.executable, "-m", "runner", "launch", str(SCENARIO), *ov, "--num-processes", str(world),
            *(["--cpu"] if ctx["cpu"] else [])]


def child_env(ctx: dict, rank_dir: Path, warmup: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SITE), str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update({RANK_DIR_ENV: str(rank_dir), WARMUP_ENV: str(warmup), "MASTER_PORT": str(ctx["port"]),
                "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
                # runner launch sets these for its workers; the accelerate run needs them too
                "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"})
    if ctx["cpu"]:
        env["OMP_NUM_THREADS"] = "1"
    return env


def run_one(name: str, world: int, ctx: dict) -> dict:
    rank_dir = ctx["work"] / "ranks" / f"{name}-{world}"
    for old in rank_dir.glob("rank*.json"):
        old.unlink()
    cmd = command(name, world, ctx)
    warmup = matrix.steps(name, ctx)[0]
    log = ctx["work"] / f"{name}-{world}.log"
    started = datetime.datetime.now()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(ctx, rank_dir, warmup), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=ctx.get("run_timeout"))
        except subprocess.TimeoutExpired:  # the launcher and every worker: they hold the GPUs
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
            fh.write(f"\nbench: killed after {ctx['run_timeout']} s\n")
    ranks = [json.loads(p.read_text()) for p in sorted(rank_dir.glob("rank*.json"))]
    rows = train_rows(ctx["work"] / "runs" / f"{name}-{world}")
    run = matrix.RUNS["lora_ddp" if name == "accelerate" else name]
    out = {"run": name, "gpus": world, "exit_code": code, "command": shlex.join(cmd), "started": started.isoformat(),
           "status": "ok" if code == 0 else "failed", **summarise(ranks, warmup),
           "first_losses": [r["loss"] for r in rows[:FIRST_LOSSES]],
           "gradient_accumulation": matrix.accumulation(name, world, ctx["gpus"]),
           "split": world if run.split_rows else 1}
    want = run.wrapper if world > 1 else None
    got = "FSDP2" if out.get("fsdp2") else out.get("wrapper")
    if code == 0 and want and got != want:
        out["status"] = f"wrong wrapper: {got}, not {want}"
    if code == 0 and len(ranks) != world:
        out["status"] = f"{len(ranks)} of {world} ranks reported"
    if code != 0:
        out["log_tail"] = log.read_text()[-3000:]
    elif name != "accelerate":
        out["reload"] = reload_on_one_gpu(ctx["work"] / "runs" / f"{name}-{world}", ctx, quantized=run.model == "llama3_70b")
        if out["reload"] != "ok" and out["status"] == "ok":
            out["status"] = "saved result does not load on one GPU"
    out["all_losses"] = [r["loss"] for r in rows]
    out["all_epochs"] = [r.get("epoch") for r in rows]
    return out


# A 70B base does not fit one GPU in bf16: the adapter is checked on the 4-bit base it was trained on.
RELOAD_4BIT = (
    "import sys, torch; from pathlib import Path; d = Path(sys.argv[1]); import json\n"
    "from transformers import AutoModelForCausalLM, BitsAndBytesConfig; from peft import PeftModel\n"
    "plan = json.loads((d / 'plan.json').read_text())\n"
    "q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_compute_dtype=torch.bfloat16)\n"
    "base = AutoModelForCausalLM.from_pretrained(plan['model']['path'], quantization_config=q, dtype=torch.bfloat16,"
    " device_map={'': 0})\n"
    "m = PeftModel.from_pretrained(base, d).eval()\n"
    "with torch.no_grad(): out = m(torch.tensor([[1, 2, 3, 4]], device='cuda')).logits\n"
    "assert torch.isfinite(out.float()).all(); print('reload ok', tuple(out.shape))\n")


def reload_on_one_gpu(run_dir: Path, ctx: dict, quantized: bool = False) -> str:
    from accept import reload  # bench/ is on sys.path (main)

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if not ctx["cpu"]:
        env["CUDA_VISIBLE_DEVICES"] = "0"
    if not quantized:
        return reload(run_dir, env=env)
    proc = subprocess.run([sys.executable, "-c", RELOAD_4BIT, str(run_dir)], capture_output=True, text=True,
                          timeout=1800, env=env)
    return "ok" if proc.returncode == 0 else f"failed: {proc.stderr[-800:]}"


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
    p.add_argument("--only", nargs="*", default=[], help="runs to do: NAME or NAME@K (default: all); ckpt70b: "
                   "only write the 70B checkpoint")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps (runs with their own: theirs)")
    p.add_argument("--warmup", type=int, default=5, help="optimizer steps before the timed window")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--stem", default="multigpu", help="results file names: OUT/STEM.json and OUT/STEM.md "
                   "(another machine's matrix in files of its own)")
    p.add_argument("--work", type=Path, default=REPO / ".runner_cache" / "bench-multigpu")
    p.add_argument("--data", type=Path, help="shared data folder (default: ./shared/data, else ../shared/data)")
    p.add_argument("--port", type=int, default=29611)
    p.add_argument("--run-timeout", type=float, help="seconds one launch may take before it is killed")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--smoke", action="store_true")
    return p.parse_args(argv)


def model_dirs(chosen, args, work: Path, data: Path) -> dict:
    """The folder of each model shape the chosen runs train: config and tokenizer (random init), or for
    the 70B shape its written weights (config only in --dry-run, which loads nothing)."""
    import catalog
    import modeldir

    out = {}
    for shape in {matrix.RUNS["lora_ddp" if n == "accelerate" else n].model for n, _ in chosen}:
        keys = {**catalog.SHAPES[shape], **(catalog.TINY if args.smoke else {})}
        if shape == "llama3_70b" and not args.dry_run and not args.smoke:
            out[shape] = write_70b(work, data)
            continue
        name = {"llama3_8b": "model-8b", "llama3_70b": "model-70b-config"}[shape]
        out[shape] = modeldir.build(keys, work / (f"{name}-smoke" if args.smoke else name), data, smoke=args.smoke)
    return out


def write_70b(work: Path, data: Path) -> Path:
    import catalog
    import modeldir
    import random_checkpoint
    from transformers import LlamaConfig

    target = work / "model-70b"
    if (target / random_checkpoint.MARKER).is_file():
        return target
    tokenizer = modeldir.train_tokenizer(data, modeldir.FULL_VOCAB)
    config = LlamaConfig(**catalog.SHAPES["llama3_70b"], eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None, dtype="bfloat16")
    print("writing the Llama-3-70B-shaped checkpoint (~141 GB)...", file=sys.stderr, flush=True)
    random_checkpoint.write(config, target, tokenizer=tokenizer)
    # Each launch fingerprints the model's files (sha256) in the launcher and again in every worker
    # unless runner's digest cache knows them: fill it once here (one read of the shards), in the
    # data cache every run of the matrix uses.
    from runner.plan.hashing import DigestCache, model_files

    cache = DigestCache(work / "cache" / "digests.json")
    for f in model_files(target, None):
        cache.file_digest(f)
    cache.save()
    return target


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(HERE))

    data = args.data or next((d for d in (REPO / "shared" / "data", REPO.parent / "shared" / "data") if d.is_dir()),
                             REPO.parent / "shared" / "data")
    cpu = args.smoke  # --dry-run plans as on the GPU host
    if not args.dry_run and not args.smoke:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: use --dry-run or --smoke on a CPU", file=sys.stderr)
            return 2
    work = args.work.resolve()
    if args.only == ["ckpt70b"]:
        print(write_70b(work, data))
        return 0
    gpus = args.gpus or (8 if args.dry_run else 2 if args.smoke else __import__("torch").cuda.device_count())
    chosen = matrix.plan_runs(gpus, args.only, cpu)
    if args.smoke:  # what CPU processes cannot run, or this machine lacks
        chosen = [(n, w) for n, w in chosen if n == "accelerate" or not (
            matrix.RUNS[n].gpu_only or not all(_has(m) for m in matrix.RUNS[n].needs))]
    ctx = {"data_dir": data.resolve(), "work": work, "smoke": args.smoke, "cpu": cpu,
           "steps": 2 if args.smoke else args.steps, "warmup": 2 if args.smoke else args.warmup,
           "port": args.port, "gpus": gpus, "out": args.out, "run_timeout": args.run_timeout}
    ctx["model_dirs"] = model_dirs(chosen, args, work, data)
    if any(matrix.RUNS.get(n) and matrix.RUNS[n].long_rows for n, _ in chosen):
        ctx["long_text"] = matrix.long_text(work / f"long-{matrix.long_tokens(ctx)}.txt", data, matrix.long_tokens(ctx))
    if args.dry_run:
        return dry_run(ctx, chosen)
    stem = f"{args.stem}-smoke" if args.smoke else args.stem
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
    parity_bad = [p for p in report["parity"] if p["global_batch_same"] and not p["match"]]
    return 1 if failed or parity_bad or (check and not check["same_first_losses"]) else 0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
