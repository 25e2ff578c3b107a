"""`runner launch cfg.yaml`: plan first (a config error never starts a worker), judge the run
directory, write the Accelerate config for the Plan into it, then start this machine's workers:
torchrun on CPU (`accelerate launch --cpu --num_processes 2` starts only one process), `accelerate
launch` on GPUs, plain python for one process on one device (no launcher needed).

What a bare `accelerate launch` does not do: each worker's own exit code comes back (workers write it
to $RUNNER_EXIT_DIR as they exit, see runner.cli), and SIGTERM / SIGINT reach every worker. The
launcher runs in a process group of its own; a signal goes to every process of that group except
the launcher itself, so the workers can finish their step and checkpoint without torchrun killing
them after its own grace period. A second SIGINT kills the whole group at once.

Multi-node: the same command on every machine, with --machine-rank (or MACHINE_RANK / NODE_RANK)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from runner.train.distributed import SAFE_NCCL_ENV
from runner.train.runtime import concrete_backend
from runner.errors import UserError

EXIT_DIR_ENV = "RUNNER_EXIT_DIR"
DEFAULT_PORT = 29500


def add_arguments(p) -> None:
    p.add_argument("config", help="config file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    p.add_argument("--dry-run", action="store_true", help="print the launch files and command, start nothing")
    p.add_argument("--num-processes", type=int, help="processes on this machine (default: plan, else GPUs, else 1)")
    p.add_argument("--machine-rank", type=int, help="this machine's rank (default: plan, MACHINE_RANK, NODE_RANK, 0)")
    p.add_argument("--cpu", action="store_true", help="run on CPU even if GPUs are visible")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in output.dir")


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    except (OSError, subprocess.SubprocessError):
        return 0


def _env_int(names, where: str):
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise UserError(f"{name}={value!r} is not a whole number", where=where) from None
    return None


def machine_values(plan, args, cpu: bool) -> dict:
    """This machine's share of the run: processes, rank, rendezvous address and port, backend."""
    d = plan.distributed
    gpus = 0 if cpu else _gpu_count()
    nproc = args.num_processes or d.num_processes or (gpus or 1)
    machines = d.num_machines
    rank = args.machine_rank if args.machine_rank is not None else d.machine_rank
    if rank is None:
        rank = _env_int(("MACHINE_RANK", "NODE_RANK"), "distributed.machine_rank") or 0
    if not 0 <= rank < machines:
        raise UserError(f"machine rank {rank} is outside 0..{machines - 1} (distributed.num_machines: {machines})",
                        where="distributed.machine_rank", hint="pass --machine-rank 0 on the main machine, 1.. on the others")
    address = d.main_address or os.environ.get("MASTER_ADDR")
    if not address:
        if machines > 1:
            raise UserError("several machines need the main machine's address",
                            where="distributed.main_address", hint="set distributed.main_address or MASTER_ADDR on every machine")
        address = "127.0.0.1"
    port = d.main_port or _env_int(("MASTER_PORT",), "distributed.main_port") or DEFAULT_PORT
    world = nproc * machines
    backend = concrete_backend(d.backend, world)
    if backend == "single" and world > 1:
        raise UserError(f"distributed.backend is single but {world} processes were asked for",
                        where="distributed.backend", hint="use backend: ddp (or auto), or one process")
    return {"num_processes": nproc, "machine_rank": rank, "address": address, "port": port, "world_size": world,
            "backend": backend, "cpu": cpu}


def overrides_for(args) -> list[str]:
    """The CLI overrides, plus --num-processes as one: workers check the world they find against the
    Plan, and the Plan (its batch size, its hash) should say how many processes there are."""
    extra = [f"distributed.num_processes={args.num_processes}"] if args.num_processes else []
    return [*args.overrides, *extra]


def build_command(plan, args, *, accelerate_config: str = "ACCELERATE_CONFIG") -> tuple[list[str], dict, dict]:
    """(argv, extra environment, machine values) that start this machine's workers."""
    cpu = bool(args.cpu) or _gpu_count() == 0
    m = machine_values(plan, args, cpu)
    train = ["-m", "runner", "train", str(Path(args.config).resolve()), *overrides_for(args)]
    if getattr(args, "overwrite", False):
        train.append("--overwrite")
    if getattr(args, "debug", False):
        train.append("--debug")  # library output from the workers too
    launcher_needed = m["world_size"] > 1 or (not cpu and m["backend"] in ("fsdp", "deepspeed"))
    if not launcher_needed:
        argv = [sys.executable, *train]
    elif cpu:
        # torchrun keeps one process per rank on CPU; the Plan's settings reach the Trainer directly.
        argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={m['num_processes']}",
                f"--nnodes={plan.distributed.num_machines}", f"--node_rank={m['machine_rank']}",
                f"--master_addr={m['address']}", f"--master_port={m['port']}", *train]
    else:
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config, *train]
    return argv, dict(SAFE_NCCL_ENV), m


def split_rows(plan, world: int) -> dict | None:
    """The ParallelismConfig values of a run whose rows are split over processes, for this launch's
    world size; a split that does not divide it is refused before any worker starts."""
    from runner.errors import UserError
    from runner.plan.parallelism import parallelism_settings

    values = parallelism_settings(plan.distributed, world, plan.model.attn_implementation)
    size = values and (values.get("cp_size") or values.get("sp_size"))
    if size and world % size:
        key = "context_parallel" if "cp_size" in values else "sequence_parallel"
        raise UserError(f"{size} does not divide the {world} processes of this launch",
                        where=f"distributed.{key}", hint=f"launch a multiple of {size} processes (--num-processes)")
    return values


def run(args) -> int:
    from runner import rundir
    from runner.plan.launch_settings import accelerate_file, deepspeed_json, write_launch_files
    from runner.plan.resolve import make_plan

    plan = make_plan(args.config, overrides_for(args))  # a config error raises here: exit 2, nothing started
    for w in plan.warnings:
        print(f"warning: {w}", file=sys.stderr)
    run_dir = Path(plan.output.dir)
    acc_path = run_dir / "accelerate_config.yaml"
    argv, env, m = build_command(plan, args, accelerate_config=str(acc_path))
    settings = accelerate_file(plan.distributed.accelerate, backend=m["backend"], num_processes=m["num_processes"],
                               machine_rank=m["machine_rank"], address=m["address"], port=m["port"], cpu=m["cpu"],
                               run_dir=run_dir)
    cfg = {"distributed": plan.config["distributed"], "training": plan.config["training"]}
    parallelism = split_rows(plan, m["world_size"])
    if args.dry_run:
        import yaml

        print(f"# {acc_path}")
        print(yaml.safe_dump(settings, sort_keys=True), end="")
        if parallelism:
            print("# parallelism_config (Accelerate's ParallelismConfig, given to the Trainer)")
            print(yaml.safe_dump(parallelism, sort_keys=True), end="")
        conf = deepspeed_json(cfg) if m["backend"] == "deepspeed" else None
        if conf is not None and "file" not in conf:
            print(f"# {run_dir / 'deepspeed.json'}")
            print(json.dumps(conf, indent=2))
        from runner.train.redaction import redact_args

        print("# command")
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(redact_args(argv, plan.secrets)))
        return 0
    # The run directory is owned and judged here, before any worker starts: a refusal starts nothing.
    # Machine 0 holds its lock for the workers' life (they know it by RUNNER_LOCK_HOLDER); the other
    # machines only write their launch files beside it.
    from runner.rundir.lock import HOLDER_ENV
    from runner.rundir.owner import claim, mark

    owner = claim(plan) if m["machine_rank"] == 0 else None
    try:
        launch = rundir.decide(plan, overwrite=args.overwrite)
        if launch.message:
            print(launch.message, file=sys.stderr)
        if launch.action == "done":
            return 0
        if owner is None:
            mark(plan)
        write_launch_files(settings, cfg, run_dir)
        if owner is not None:
            env[HOLDER_ENV] = str(os.getpid())
        return _supervise(argv, env, local_ranks=_local_ranks(m))
    finally:
        if owner is not None:
            owner.release()


def _local_ranks(m: dict) -> list[int]:
    first = m["machine_rank"] * m["num_processes"]  # torchrun's static rendezvous numbers ranks by node
    return list(range(first, first + m["num_processes"]))


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) for every process we can see in /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        table[int(entry)] = (int(fields[1]), int(fields[2]))
    return table


def worker_targets(root: int, table: dict) -> tuple[list[int], list[int]]:
    """(process groups, single pids) to signal so that every worker under `root` gets it once.
    torchrun (also inside `accelerate launch`) starts each worker in a session of its own: those
    groups are the targets, and the launcher is spared. With no such group (plain python, or
    Accelerate's one-process launcher) the processes under `root` in its group are, or root itself."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    groups, same_group, todo = [], [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        pgid = table[pid][1]
        if pgid == pid:
            groups.append(pid)  # a worker's own group also holds its data loader processes
            continue
        if pgid == root:
            same_group.append(pid)
        todo.extend(children.get(pid, []))
    if groups:
        return sorted(groups), []
    return [], sorted(same_group) or [root]


LAUNCHERS = ("torch.distributed.run", "accelerate.commands.launch")


def _is_launcher(argv: list[str]) -> bool:
    return len(argv) > 2 and argv[1] == "-m" and argv[2] in LAUNCHERS


def _signal_workers(proc: subprocess.Popen, signum: int, launcher: bool) -> None:
    if not launcher or not Path("/proc/self/stat").exists():
        groups, pids = [proc.pid], []  # the worker itself (or, without /proc, the group as a terminal would)
    else:
        groups, pids = worker_targets(proc.pid, _processes())
    for pgid in groups:
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _supervise(argv: list[str], extra_env: dict, local_ranks=None) -> int:
    """Run the launcher in its own process group, forward SIGTERM/SIGINT to its workers, and return
    the workers' own exit code (the first non-zero one by rank), else the launcher's."""
    launcher = _is_launcher(argv)
    received: list[int] = []
    started: list[subprocess.Popen] = []

    def deliver(signum):
        if not started:
            return  # remembered; delivered once the launcher exists
        proc = started[0]
        if signum == signal.SIGINT and received.count(signal.SIGINT) > 1:
            _signal_workers(proc, signal.SIGKILL, launcher)  # a second Ctrl-C stops at once
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        _signal_workers(proc, signum, launcher)

    def forward(signum, _frame):
        received.append(signum)
        deliver(signum)

    # Handlers first: a signal that arrives while the launcher starts must not orphan it.
    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with tempfile.TemporaryDirectory(prefix="runner-exit-") as exit_dir:
            env = {**os.environ, **extra_env, EXIT_DIR_ENV: exit_dir}
            started.append(subprocess.Popen(argv, env=env, start_new_session=True))
            for signum in list(received):
                deliver(signum)
            code = started[0].wait()
            codes = read_exit_codes(exit_dir)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return combine_exit_codes(code, codes, received, local_ranks)


def read_exit_codes(exit_dir) -> dict[int, int]:
    codes = {}
    for f in Path(exit_dir).glob("rank*"):
        try:
            codes[int(f.name[4:])] = int(f.read_text().strip())
        except ValueError:
            continue
    return codes


def combine_exit_codes(launcher: int, codes: dict, received: list, local_ranks=None) -> int:
    """The code `runner launch` exits with: a worker's own non-zero code wins (lowest rank first);
    workers that all finished with 0 mean success whatever the launcher says; a rank that never
    reported was killed (named on stderr)."""
    failed = [codes[r] for r in sorted(codes) if codes[r] != 0]
    silent = [r for r in (local_ranks or []) if r not in codes]
    if silent and (failed or launcher != 0):
        print(f"runner launch: rank{'s' * (len(silent) > 1)} {', '.join(map(str, silent))} ended without an exit "
              "code (killed by a signal, or stopped by the launcher after another rank failed)", file=sys.stderr)
    if failed:
        first = min(r for r in codes if codes[r] != 0)
        print(f"runner launch: rank {first} exited with code {failed[0]}", file=sys.stderr)
        return failed[0]
    if codes and not silent and all(c == 0 for c in codes.values()):
        return 0
    if received:
        return 128 + received[0]
    return launcher if launcher >= 0 else 128 - launcher


def record_exit(code: int) -> None:
    """Called by a worker as it exits (runner.cli): tells `runner launch` this rank's exit code."""
    exit_dir = os.environ.get(EXIT_DIR_ENV)
    if not exit_dir:
        return
    rank = os.environ.get("RANK", "0")
    tmp = Path(exit_dir, f".rank{rank}.tmp")
    try:
        tmp.write_text(str(code))
        os.replace(tmp, Path(exit_dir, f"rank{rank}"))  # never half a number
    except OSError:
        print(f"runner: cannot write the exit code to {exit_dir}", file=sys.stderr)
