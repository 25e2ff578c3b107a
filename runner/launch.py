"""`runner launch cfg.yaml`: plan first (a config error never starts a worker), write the Accelerate
config for the Plan into the run directory, then start the workers through Accelerate's launcher
(GPU) or torchrun (CPU: `accelerate launch --cpu --num_processes 2` starts only one process).

What a bare `accelerate launch` does not: each worker's own exit code comes back (workers write it
to a file as they exit), and SIGTERM / SIGINT reach every worker (the launcher runs in its own
process group and we signal the whole group)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from runner.distributed import SAFE_NCCL_ENV
from runner.errors import UserError
from runner.launch_config import deepspeed_json
from runner.plan import make_plan

EXIT_DIR_ENV = "RUNNER_EXIT_DIR"


def add_arguments(p) -> None:
    p.add_argument("config", help="config file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    p.add_argument("--dry-run", action="store_true", help="print the launch command and config, start nothing")
    p.add_argument("--num-processes", type=int, help="processes on this machine (default: plan, else GPUs, else 1)")
    p.add_argument("--machine-rank", type=int, help="this machine's rank (default: plan, MACHINE_RANK, NODE_RANK, 0)")
    p.add_argument("--cpu", action="store_true", help="run on CPU even if GPUs are visible")


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    except (OSError, subprocess.SubprocessError):
        return 0


def _accelerate_yaml(settings: dict) -> str:
    import yaml

    return yaml.safe_dump(settings, sort_keys=True)


def build_command(plan, args) -> tuple[list[str], dict, dict]:
    """(argv, extra environment, accelerate config settings) for this machine's workers."""
    d = plan.distributed
    cpu = args.cpu or _gpu_count() == 0
    nproc = args.num_processes or d["num_processes"] or (1 if cpu else _gpu_count())
    env_rank = os.environ.get("MACHINE_RANK", os.environ.get("NODE_RANK"))
    machine_rank = args.machine_rank if args.machine_rank is not None else (
        d["machine_rank"] if d["machine_rank"] is not None else int(env_rank or 0))
    address = d["main_address"] or os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = d["main_port"] or int(os.environ.get("MASTER_PORT", "29500"))
    train = ["-m", "runner", "train", str(Path(args.config).resolve()), *args.overrides]
    settings = dict(d["accelerate"])
    backend = d["backend"]
    if backend == "auto":
        backend = "ddp" if nproc * d["num_machines"] > 1 else "single"
    settings.update(num_processes=nproc * d["num_machines"], machine_rank=machine_rank, main_process_ip=address,
                    main_process_port=port, use_cpu=cpu,
                    distributed_type={"single": "NO", "ddp": "MULTI_CPU" if cpu else "MULTI_GPU",
                                      "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}[backend])
    if settings.get("mixed_precision") == "auto":
        settings["mixed_precision"] = "no" if cpu else "bf16"
    if "deepspeed_config" in settings:
        settings["deepspeed_config"] = {"deepspeed_config_file": "deepspeed.json", "zero3_init_flag": d["deepspeed"]["zero_stage"] == 3}
    if nproc * d["num_machines"] == 1 and backend == "single":
        argv = [sys.executable, *train]  # one process needs no launcher
    elif cpu:
        # torchrun keeps one process per rank on CPU; the Plan's settings reach the Trainer directly.
        argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                f"--nnodes={d['num_machines']}", f"--node_rank={machine_rank}",
                f"--master_addr={address}", f"--master_port={port}", *train]
    else:
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "ACCELERATE_CONFIG", *train]
    env = dict(SAFE_NCCL_ENV)
    return argv, env, settings


def run(args) -> int:
    plan = make_plan(args.config, args.overrides)  # errors here: exit 2, nothing started
    for w in plan.warnings:
        print(f"warning: {w}", file=sys.stderr)
    argv, env, settings = build_command(plan, args)
    run_dir = Path(plan.output["dir"])
    acc_file = run_dir / "accelerate_config.yaml"
    argv = [str(acc_file) if a == "ACCELERATE_CONFIG" else a for a in argv]
    if args.dry_run:
        print("# accelerate config (written to %s at launch)" % acc_file)
        print(_accelerate_yaml(settings))
        if plan.distributed["backend"] == "deepspeed":
            print("# deepspeed.json")
            print(json.dumps(deepspeed_json({"distributed": plan.distributed, "training": plan.training}), indent=2))
        print(" ".join(f"{k}={v}" for k, v in env.items()), shlex.join(argv))
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    acc_file.write_text(_accelerate_yaml(settings))
    if plan.distributed["backend"] == "deepspeed":
        conf = deepspeed_json({"distributed": plan.distributed, "training": plan.training})
        if "file" not in conf:
            (run_dir / "deepspeed.json").write_text(json.dumps(conf, indent=2))
    return _supervise(argv, env)


def _supervise(argv: list[str], extra_env: dict) -> int:
    """Run the launcher in its own process group; forward signals to the group; return the workers'
    own exit code (the first non-zero one, by rank), else the launcher's."""
    with tempfile.TemporaryDirectory(prefix="runner-exit-") as exit_dir:
        env = {**os.environ, **extra_env, EXIT_DIR_ENV: exit_dir}
        proc = subprocess.Popen(argv, env=env, start_new_session=True)
        received: list[int] = []

        def forward(signum, _frame):
            received.append(signum)
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass
            if len(received) > 1 and signum == signal.SIGINT:
                os.killpg(proc.pid, signal.SIGKILL)  # a second Ctrl-C stops at once

        old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = proc.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        codes = {}
        for f in Path(exit_dir).glob("rank*"):
            try:
                codes[int(f.name[4:])] = int(f.read_text().strip())
            except ValueError:
                continue
        failed = [codes[r] for r in sorted(codes) if codes[r] != 0]
        if failed:
            return failed[0]
        if codes and code != 0 and all(c == 0 for c in codes.values()):
            return 0 if not received else code
        return code if code >= 0 else 128 - code


def record_exit(code: int) -> None:
    """Called by a worker as it exits (runner.cli): tells `runner launch` this rank's exit code."""
    exit_dir = os.environ.get(EXIT_DIR_ENV)
    if not exit_dir:
        return
    try:
        Path(exit_dir, f"rank{os.environ.get('RANK', '0')}").write_text(str(code))
    except OSError:
        raise UserError(f"cannot write the exit code to {exit_dir}") from None
