"""SIGTERM / SIGINT on a real `runner train` process: the step finishes, a complete checkpoint is
written, the exit code is 75 (EX_TEMPFAIL: interrupted, resumable), and the resumed run ends
bitwise equal to an uninterrupted one. A second SIGINT stops at once (exit 130).

The child is `runner.cli.main(["train", cfg])` with training steps slowed by a sleep (numerics
untouched) so that the signal lands mid-run rather than after a run of a second."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from runner import rundir
from runner.plan.resolve import make_plan
from runner.train.signals import EXIT_INTERRUPTED
from runner.train.command import run
from tests.test_reliability_kill import ADAPTER, TRAINING, adapter_weights, reference, train_losses  # noqa: F401 (fixture)
from tests.tiny_model import REPO, write_config

torch.set_num_threads(1)

CHILD = """
import sys, time
import torch
torch.set_num_threads(1)
from transformers import Trainer
step = Trainer.training_step
def slow(self, *a, **k):
    time.sleep(0.25)
    return step(self, *a, **k)
Trainer.training_step = slow
from runner.cli import main
sys.exit(main(["train", sys.argv[1]]))
"""


def start(cfg, log):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(cfg)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def wait_for_step(proc, run_dir, step, timeout=120):
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "training ended before the signal"
        if metrics.is_file():
            rows = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip().endswith("}")]
            if any(r.get("step", 0) >= step for r in rows):
                return
        time.sleep(0.05)
    raise AssertionError(f"step {step} never logged")


def started_at(tmp_path, model_dir, step):
    """A `runner train` child (save_every far away) that has logged `step`: (config, run dir, process)."""
    cfg = write_config(tmp_path, model_dir, training=TRAINING, adapter=ADAPTER, extra={"output": {"save_every": 100}})
    with open(tmp_path / "child.log", "w") as log:  # the child keeps its own handle
        proc = start(cfg, log)
    wait_for_step(proc, tmp_path / "run", step)
    return cfg, tmp_path / "run", proc


def test_sigterm_checkpoints_exits_75_and_resumes_exactly(tmp_path, reference):
    model_dir, straight = reference
    cfg, run_dir, proc = started_at(tmp_path, model_dir, 3)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    out = (tmp_path / "child.log").read_text()
    assert code == EXIT_INTERRUPTED, out[-3000:]
    assert "SIGTERM" in out and "resume" in out
    assert not (run_dir / rundir.RUN_MARKER).exists()
    # save_every is far away: the one checkpoint is the one the signal asked for.
    (only,) = rundir.complete_checkpoints(run_dir)
    stopped = int(only.name.split("-")[1])
    assert stopped >= 3
    assert max(train_losses(run_dir)) == stopped, "the checkpoint is of the last step that ran"
    assert stopped < TRAINING["max_steps"]

    resumed = run(make_plan(cfg))
    expected, got = adapter_weights(straight), adapter_weights(resumed)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert train_losses(resumed) == train_losses(straight)


@pytest.mark.slow
def test_second_sigint_stops_at_once(tmp_path, reference):
    model_dir, _ = reference
    _, run_dir, proc = started_at(tmp_path, model_dir, 2)
    proc.send_signal(signal.SIGINT)
    # Two signals before Python runs its handler would count as one: wait for the first's message.
    deadline = time.time() + 30
    while "finishing this step" not in (tmp_path / "child.log").read_text() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=120)
    out = (tmp_path / "child.log").read_text()
    assert code == 130, out[-3000:]
    assert "interrupted" in out
    assert not (run_dir / rundir.RUN_MARKER).exists()
    assert rundir.complete_checkpoints(run_dir) == []  # no save on the second signal
