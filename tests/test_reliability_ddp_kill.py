"""DDP kill test (issue 9): two CPU processes under `runner launch --cpu --num-processes 2`, one worker
rank killed with SIGKILL once a complete checkpoint exists. The launch must stop on its own (no hang
on the dead peer), exit non-zero and name the rank that died, and leave no checkpoint that looks
complete without being so. Launching the same command again resumes (`output.resume: auto`) from the
newest complete checkpoint and must end with adapter tensors bitwise equal to an uninterrupted
two-process run's, and with the same per-step losses after the resume point.

The worker pids are found in /proc: `runner launch` -> torchrun -> one process per rank, each telling
its rank in its RANK environment variable. The config gives resume work to do: LoRA dropout (RNG
state of every rank), several epochs of reshuffled data (sampler position), gradient accumulation
and a warmup + cosine schedule."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from runner import rundir
from tests.test_distributed_train import finish, run_cli, safetensors
from tests.tiny_model import save_tiny_model, write_config

pytestmark = pytest.mark.slow

STEPS = 8
KILL_AFTER = 4  # the complete checkpoint that must exist before a rank is killed
TRAINING = {"max_steps": STEPS, "micro_batch_size": 2, "gradient_accumulation": 2, "learning_rate": 1e-2,
            "lr_scheduler": "cosine", "warmup_steps": 2, "chunked_loss": False}
ADAPTER = {"dropout": 0.1}
OUTPUT = {"save_every": 2}
STOP_WITHIN_S = 60


def make_cfg(root: Path, model_dir: Path) -> Path:
    return write_config(root, model_dir, name="ddpkill", training=TRAINING, adapter=ADAPTER,
                        extra={"distributed": {"backend": "ddp"}, "output": {**OUTPUT, "dir": str(root / "run")}})


def launch_argv(cfg: Path) -> list:
    return ["launch", cfg, "--cpu", "--num-processes", "2"]


def train_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows if r.get("kind") == "train"]
    assert len(steps) == len(set(steps)), f"duplicated steps in metrics.jsonl: {steps}"
    return {r["step"]: r["loss"] for r in rows if r.get("kind") == "train"}


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _descendants(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        for child in _children(todo.pop()):
            seen.append(child)
            todo.append(child)
    return seen


def _rank_of(pid: int) -> int | None:
    """The RANK a torchrun worker was started with; None for other processes (torchrun itself, and
    data loader or compile helpers that inherit RANK but are not a worker's main process)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if b"torch.distributed.run" in cmdline:
        return None
    pgrp = int(stat[stat.rindex(")") + 2:].split()[2])
    if pgrp != pid:  # torchrun starts each worker in a session (and group) of its own
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def worker_pids(launch_pid: int) -> dict[int, int]:
    """rank -> pid of the worker processes under `runner launch`."""
    ranks = {}
    for pid in _descendants(launch_pid):
        rank = _rank_of(pid)
        if rank is not None:
            ranks[rank] = pid
    return ranks


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_dir) -> dict:
    """The uninterrupted two-process run: the adapter and losses the killed-and-resumed run must end with."""
    root = tmp_path_factory.mktemp("straight")
    cfg = make_cfg(root, model_dir)
    started = time.monotonic()
    run_cli(launch_argv(cfg), probe_dir=root / "probe")
    run = root / "run"
    assert (run / rundir.RUN_MARKER).is_file()
    return {"losses": train_losses(run), "adapter": safetensors(run / "adapter_model.safetensors"),
            "seconds": time.monotonic() - started}


def test_ddp_kill_one_rank_stops_cleanly_and_resume_is_bitwise_exact(tmp_path, model_dir, reference):
    import torch

    assert sorted(reference["losses"]) == list(range(1, STEPS + 1))
    cfg = make_cfg(tmp_path, model_dir)
    run = tmp_path / "run"
    marker = rundir.checkpoints_dir(run) / f"checkpoint-{KILL_AFTER}" / rundir.CHECKPOINT_MARKER

    # (2) Start the same run, wait for a complete checkpoint-4, kill -9 rank 1.
    proc = run_cli(launch_argv(cfg), probe_dir=tmp_path / "probe", wait=False)
    deadline = time.monotonic() + 300
    while not marker.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = finish(proc, timeout=60)
            pytest.fail(f"checkpoint-{KILL_AFTER} never became complete (exit {proc.returncode}):\n{err[-3000:]}")
        time.sleep(0.02)
    workers = worker_pids(proc.pid)
    assert sorted(workers) == [0, 1], f"expected one worker per rank under runner launch, found {workers}"
    os.kill(workers[1], signal.SIGKILL)
    killed_at = time.monotonic()
    assert not (run / rundir.RUN_MARKER).exists(), "the run finished before a rank could be killed"

    # The launch stops by itself, non-zero, naming the dead rank.
    try:
        out, err = proc.communicate(timeout=STOP_WITHIN_S)
    except Exception:
        finish(proc, timeout=1)  # stops it through its SIGTERM forwarding and fails the test
        raise
    stop_s = time.monotonic() - killed_at
    assert proc.returncode != 0, f"runner launch exited 0 after a rank was killed:\n{err[-3000:]}"
    assert re.search(r"rank 1 ended without an exit code|ranks? [0-9, ]*\b1\b[0-9, ]* ended without", err), \
        f"runner launch did not name the killed rank (exit {proc.returncode}):\n{err[-3000:]}"
    assert not (run / rundir.RUN_MARKER).exists()
    assert not (run / "adapter_model.safetensors").exists(), "a final adapter was saved by a broken run"
    for pid in workers.values():  # no worker is left behind
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1], \
            f"worker {pid} outlived runner launch"

    # Nothing looks complete that is not: every checkpoint-N has its marker and its full content.
    plan_hash = json.loads((run / "plan.json").read_text())["hashes"]["plan"]
    named = sorted(p for p in rundir.checkpoints_dir(run).glob("checkpoint-*"))
    complete = rundir.complete_checkpoints(run)
    assert sorted(complete) == named, f"checkpoint directories without the completeness marker: " \
                                      f"{sorted(set(named) - set(complete))}"
    for ckpt in complete:
        assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "trainer_state.json").is_file(), ckpt
        assert sorted(p.name for p in ckpt.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"], ckpt
        assert (ckpt / "optimizer.pt").is_file() and (ckpt / "scheduler.pt").is_file(), ckpt
        assert json.loads((ckpt / rundir.CHECKPOINT_MARKER).read_text())["plan_hash"] == plan_hash
    newest = int(complete[-1].name.split("-")[1])
    assert KILL_AFTER <= newest < STEPS

    # (3) The same command again resumes from the newest complete checkpoint and finishes.
    _, err2 = run_cli(launch_argv(cfg), probe_dir=tmp_path / "probe2")
    assert f"resuming from checkpoint-{newest}" in err2, err2[-3000:]
    assert (run / rundir.RUN_MARKER).is_file()
    got = safetensors(run / "adapter_model.safetensors")
    expected = reference["adapter"]
    assert sorted(got) == sorted(expected)
    unequal = [k for k in got if not torch.equal(got[k], expected[k])]
    assert not unequal, (f"resumed adapter differs from the uninterrupted DDP run in {len(unequal)}/{len(got)} "
                         f"tensors (max abs diff {max((got[k] - expected[k]).abs().max().item() for k in unequal):.3g}), "
                         f"e.g. {unequal[:3]}")
    resumed = train_losses(run)
    after = {s: l for s, l in resumed.items() if s > newest}
    assert after == {s: l for s, l in reference["losses"].items() if s > newest}, \
        f"losses after resuming from step {newest} differ: {after} vs {reference['losses']}"
    assert resumed == reference["losses"], "metrics.jsonl is not cut back to the checkpoint step"
    print(f"reference {reference['seconds']:.1f} s; rank 1 killed after checkpoint-{KILL_AFTER}, "
          f"launch stopped {stop_s:.1f} s later (exit {proc.returncode}); resumed from checkpoint-{newest}; "
          f"it said: {err.strip().splitlines()[-2:]}")
