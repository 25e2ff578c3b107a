"""A real full disk (issue 17, item 4): the run directory sits on a small tmpfs mounted by the test,
and a callback fills it with a plain file at a chosen step, so that a checkpoint or the final
model hits ENOSPC in the real writers: safetensors (SafetensorError), torch.save (RuntimeError from
its zip writer), json. Each must end in a UserError that says where the disk is full and how much
room is needed (exit 2 from the command line, no traceback), leave no staged or half-written file,
keep the earlier checkpoint whole, and resume once space is freed.

Mounting needs root (or CAP_SYS_ADMIN); without it these tests are skipped, saying so."""

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from transformers import TrainerCallback

from runner import rundir
from runner.errors import UserError
from runner.plan.resolve import make_plan
from runner.train.command import run
from tests.tiny_model import REPO, save_tiny_model, write_config

torch.set_num_threads(1)
PAGE = 4096


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root): {out.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill the filesystem with a real file, then give back `leave` bytes."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    chunk = b"\0" * (1 << 16)
    try:
        while True:
            os.write(fd, chunk)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)
    size = (disk / "filler").stat().st_size
    os.truncate(disk / "filler", max(0, size - leave))


def pages(n: int) -> int:
    return -(-n // PAGE) * PAGE


class FillAt(TrainerCallback):
    """Fills the disk at the end of step `step` (on_train_end with step None)."""

    def __init__(self, disk, step, leave):
        self.disk, self.step, self.leave = disk, step, leave

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            fill(self.disk, self.leave(Path(args.output_dir)))

    def on_train_end(self, args, state, control, **kwargs):
        if self.step is None:
            fill(self.disk, self.leave(Path(args.output_dir)))


def room_for_all_but_the_optimizer(checkpoints: Path) -> int:
    """Room for the files a checkpoint writes before optimizer.pt, and half of optimizer.pt (sizes
    of checkpoint-2): the next checkpoint fails inside torch.save."""
    done = checkpoints / "checkpoint-2"
    later = ("optimizer.pt", "scheduler.pt", "trainer_state.json", rundir.CHECKPOINT_MARKER)
    before = sum(pages(p.stat().st_size) for p in done.iterdir() if p.name not in later and "rng_state" not in p.name)
    return before + pages((done / "optimizer.pt").stat().st_size // 2) + 2 * PAGE


@pytest.mark.parametrize("writer", ["safetensors", "torch.save"])
def test_a_full_disk_while_checkpointing_is_a_clear_error_and_the_run_resumes(tmp_path, small_disk, model_dir,
                                                                               writer):
    run_dir = small_disk / "run"
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 6},
                       extra={"output": {"dir": str(run_dir), "save_every": 2, "save_total_limit": 1}})
    leave = (lambda _: 2 * PAGE) if writer == "safetensors" else room_for_all_but_the_optimizer
    with pytest.raises(UserError) as err:
        run(make_plan(cfg), callbacks=[FillAt(small_disk, 3, leave)])
    cause = err.value.__cause__
    assert isinstance(cause, SafetensorError if writer == "safetensors" else RuntimeError), repr(cause)
    assert not isinstance(cause, OSError)
    message = err.value.message
    assert f"could not write checkpoint-4: the disk is full at {run_dir / 'checkpoints'}" in message, message
    needed = int(re.search(r"about ([\d,]+) bytes", message).group(1).replace(",", ""))
    assert needed == sum(p.stat().st_size for p in (run_dir / "checkpoints" / "checkpoint-2").rglob("*") if p.is_file())
    assert "the size of checkpoint-2" in message and "newest complete checkpoint is checkpoint-2" in message
    assert not (rundir.checkpoints_dir(run_dir) / "checkpoint-4").exists(), "partial copy left"
    (kept,) = rundir.complete_checkpoints(run_dir)
    assert kept.name == "checkpoint-2" and rundir.checkpoint_problem(kept) is None

    (small_disk / "filler").unlink()
    run(make_plan(cfg))  # space freed: resumes from checkpoint-2
    assert (run_dir / rundir.RUN_MARKER).is_file()


def test_a_full_disk_at_the_first_checkpoint_estimates_from_weights_and_optimizer(tmp_path, small_disk, model_dir):
    run_dir = small_disk / "run"
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 2},
                       extra={"output": {"dir": str(run_dir), "save_every": 2}})
    with pytest.raises(UserError) as err:
        run(make_plan(cfg), callbacks=[FillAt(small_disk, 1, lambda _: 2 * PAGE)])
    message = err.value.message
    assert "could not write checkpoint-2: the disk is full" in message and "no complete checkpoint yet" in message
    assert "(its weights and optimizer state, besides smaller files)" in message, message
    needed = int(re.search(r"about ([\d,]+) bytes", message).group(1).replace(",", ""))
    assert not list(rundir.checkpoints_dir(run_dir).glob("checkpoint-*"))

    (small_disk / "filler").unlink()
    run(make_plan(cfg))
    written = rundir.checkpoints_dir(run_dir) / "checkpoint-2"
    weights = sum(written.joinpath(n).stat().st_size for n in ("adapter_model.safetensors", "optimizer.pt"))
    assert 0.6 * weights < needed <= weights, (needed, weights)  # tiny tensors: headers weigh a lot


CHILD = """
import sys
import torch
torch.set_num_threads(1)
from pathlib import Path
from runner.train import recipe
from tests.test_reliability_diskfull import FillAt
disk = Path(sys.argv[2])
plain = recipe.train
recipe.train = lambda plan, **kw: plain(plan, **{**kw, "callbacks": [FillAt(disk, None, lambda _: 0)]})
from runner.cli import main
sys.exit(main(["train", sys.argv[1]]))
"""


def test_a_full_disk_at_the_final_save_exits_2_and_leaves_no_half_model(tmp_path, small_disk, model_dir):
    run_dir = small_disk / "run"
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 4},
                       extra={"output": {"dir": str(run_dir), "save_every": 2}})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(cfg), str(small_disk)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert f"could not write the trained model: the disk is full at {run_dir}" in out.stderr, out.stderr[-2000:]
    assert re.search(r"about [\d,]+ bytes needed \(the adapter's weights\)", out.stderr)
    assert not list(run_dir.glob("adapter_*")) and not (run_dir / rundir.RUN_MARKER).exists()

    (small_disk / "filler").unlink()
    run(make_plan(cfg))  # resumes from checkpoint-4 and writes the model
    assert (run_dir / rundir.RUN_MARKER).is_file() and (run_dir / "adapter_model.safetensors").is_file()
