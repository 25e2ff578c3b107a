"""Checkpoint safety: a changed plan is refused naming the keys unless resumed on purpose
(--resume-changed), save_total_limit never removes the only complete checkpoint, and a full disk
while saving is a clear error that leaves the earlier checkpoint complete and the run resumable."""

import errno
import json

import pytest
import torch
from transformers import TrainerCallback

from runner import rundir
from runner.errors import UserError
from runner.plan.resolve import make_plan
from runner.train.command import run
from tests.tiny_model import save_tiny_model, write_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


class Crash(TrainerCallback):
    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise RuntimeError("simulated crash")


def steps_logged(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r.get("kind") == "train"]


def test_changed_plan_is_refused_naming_keys_and_resumes_when_asked(tmp_path, model_dir):
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 4}, extra={"output": {"save_every": 2}})
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_plan(cfg), callbacks=[Crash(3)])
    run_dir = tmp_path / "run"

    longer = ["training.max_steps=6", "training.learning_rate=0.002"]
    with pytest.raises(UserError) as err:
        run(make_plan(cfg, longer))
    assert "training.max_steps: 4 -> 6" in err.value.message and "training.learning_rate" in err.value.message
    assert "--resume-changed" in err.value.hint
    assert not (run_dir / rundir.RUN_MARKER).exists()

    run(make_plan(cfg, longer), resume_changed=True)
    assert (run_dir / rundir.RUN_MARKER).is_file()
    assert steps_logged(run_dir) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "plan.json").read_text())["training"]["max_steps"] == 6


def test_cli_flag_resume_changed(tmp_path, model_dir, capsys):
    from runner.cli import main

    cfg = write_config(tmp_path, model_dir, training={"max_steps": 4}, extra={"output": {"save_every": 2}})
    with pytest.raises(RuntimeError):
        run(make_plan(cfg), callbacks=[Crash(3)])
    assert main(["train", str(cfg), "training.max_steps=5"]) == 2
    assert "training.max_steps" in capsys.readouterr().err
    assert main(["train", str(cfg), "training.max_steps=5", "--resume-changed"]) == 0
    assert "with a changed plan: training.max_steps: 4 -> 5" in capsys.readouterr().err
    assert steps_logged(tmp_path / "run") == [1, 2, 3, 4, 5]


def _checkpoint(root, step, complete=True):
    path = rundir.checkpoints_dir(root) / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        (path / rundir.CHECKPOINT_MARKER).write_text("{}")
    return path


def test_save_total_limit_never_deletes_the_only_complete_checkpoint(tmp_path):
    only = _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4, complete=False)  # the newest, but interrupted
    rundir.rotate_checkpoints(str(rundir.checkpoints_dir(tmp_path)), 1)
    assert rundir.complete_checkpoints(tmp_path) == [only] and only.is_dir()
    assert not (rundir.checkpoints_dir(tmp_path) / "checkpoint-4").exists()

    newer = _checkpoint(tmp_path, 6)
    rundir.rotate_checkpoints(str(rundir.checkpoints_dir(tmp_path)), 1)
    assert rundir.complete_checkpoints(tmp_path) == [newer]
    rundir.rotate_checkpoints(str(rundir.checkpoints_dir(tmp_path)), None)  # no limit: keeps all
    assert rundir.complete_checkpoints(tmp_path) == [newer]


def test_full_disk_during_save_is_a_clear_error_and_the_previous_checkpoint_stays(tmp_path, model_dir, monkeypatch):
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 6},
                       extra={"output": {"save_every": 2, "save_total_limit": 1}})
    real_save = torch.save
    hit = []

    def save(obj, f, *args, **kwargs):  # the disk fills up while checkpoint-4 is written
        if "checkpoint-4" in str(f):
            hit.append(str(f))
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(UserError) as err:
        run(make_plan(cfg))
    assert hit, "the staged write was never attempted"
    assert "could not write checkpoint-4: the disk is full" in err.value.message
    assert "checkpoint-2" in err.value.message and "resume" in err.value.hint
    run_dir = tmp_path / "run"
    (kept,) = rundir.complete_checkpoints(run_dir)
    assert kept.name == "checkpoint-2" and (kept / "optimizer.pt").is_file()
    assert not (rundir.checkpoints_dir(run_dir) / "checkpoint-4").exists()

    monkeypatch.setattr(torch, "save", real_save)
    run(make_plan(cfg))  # space freed: resumes from checkpoint-2
    assert (run_dir / rundir.RUN_MARKER).is_file()
    assert steps_logged(run_dir) == [1, 2, 3, 4, 5, 6]


class FirstStep(TrainerCallback):
    step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.step = state.global_step


@pytest.mark.parametrize("damage", ["truncated_weights", "truncated_optimizer", "old_marker_truncated_weights"])
def test_a_complete_checkpoint_with_truncated_files_is_skipped_for_the_previous_one(tmp_path, model_dir, capsys,
                                                                                       damage):
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 6}, extra={"output": {"save_every": 2}})
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_plan(cfg), callbacks=[Crash(5)])
    run_dir = tmp_path / "run"
    newest = rundir.complete_checkpoints(run_dir)[-1]
    assert newest.name == "checkpoint-4"
    marker = json.loads((newest / rundir.CHECKPOINT_MARKER).read_text())
    assert marker["files"]["adapter_model.safetensors"] == (newest / "adapter_model.safetensors").stat().st_size
    if damage.startswith("old_marker"):  # written before markers held sizes: the files' own headers tell
        (newest / rundir.CHECKPOINT_MARKER).write_text(json.dumps({"step": 4}))
    victim = newest / ("optimizer.pt" if damage == "truncated_optimizer" else "adapter_model.safetensors")
    with open(victim, "r+b") as fh:  # as a disk that lost the end of the write leaves it
        fh.truncate(victim.stat().st_size // 2)

    first = FirstStep()
    capsys.readouterr()
    run(make_plan(cfg), callbacks=[first])
    err = capsys.readouterr().err
    assert f"warning: {newest} is damaged ({victim.name}" in err and "resuming from checkpoint-2" in err, err
    assert first.step == 2
    assert (run_dir / rundir.RUN_MARKER).is_file()
    assert steps_logged(run_dir) == [1, 2, 3, 4, 5, 6]
    assert rundir.checkpoint_problem(rundir.complete_checkpoints(run_dir)[-1]) is None
