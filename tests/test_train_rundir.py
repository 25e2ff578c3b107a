"""The run directory across launches: a finished run is refused or left alone, overwrite replaces
it, an interrupted run resumes from its newest complete checkpoint to the same result as an
uninterrupted one, plan changes are named, and no secret is ever written."""

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
    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise RuntimeError("simulated crash")


class FirstStep(TrainerCallback):
    step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.step = state.global_step


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r.get("kind") == "train"}


def test_finished_run_is_left_alone_refused_on_change_and_replaced_on_overwrite(tmp_path, model_dir):
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 3})
    run_dir = run(make_plan(cfg))
    marker = (run_dir / rundir.RUN_MARKER).read_text()

    assert run(make_plan(cfg)) == run_dir  # same plan, finished: nothing to train
    assert (run_dir / rundir.RUN_MARKER).read_text() == marker

    with pytest.raises(UserError) as err:
        run(make_plan(cfg, ["training.learning_rate=0.001"]))
    assert "finished run" in err.value.message and "training.learning_rate" in err.value.message
    assert "overwrite" in err.value.hint

    with pytest.raises(UserError, match="finished run"):
        run(make_plan(cfg, ["output.resume=never"]))

    run(make_plan(cfg, ["training.learning_rate=0.001"]), overwrite=True)
    stored = json.loads((run_dir / "plan.json").read_text())
    assert stored["training"]["learning_rate"] == 0.001
    assert (run_dir / rundir.RUN_MARKER).read_text() != marker


def test_foreign_directory_is_refused(tmp_path, model_dir):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no runner run"):
        run(make_plan(write_config(tmp_path, model_dir, training={"max_steps": 2})))


def test_interrupted_run_resumes_from_newest_complete_checkpoint_to_the_same_result(tmp_path, model_dir):
    training = {"max_steps": 8, "learning_rate": 1e-2}
    straight = run(make_plan(write_config(tmp_path / "a", model_dir, training=training)))

    cfg = write_config(tmp_path / "b", model_dir, training=training, extra={"output": {"save_every": 2}})
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_plan(cfg), callbacks=[Crash(at=5)])
    run_dir = tmp_path / "b" / "run"
    assert not (run_dir / rundir.RUN_MARKER).exists()
    assert [p.name for p in rundir.complete_checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-4"]
    # A half-written checkpoint (no marker) and an older runner's staging leftover are never resumed from.
    (run_dir / "checkpoints" / "checkpoint-6").mkdir()
    (run_dir / "checkpoints" / ".staging" / "checkpoint-7").mkdir(parents=True)

    with pytest.raises(UserError) as err:
        run(make_plan(cfg, ["training.weight_decay=0.1"]))
    assert "cannot resume" in err.value.message and "training.weight_decay" in err.value.message

    first = FirstStep()
    run(make_plan(cfg), callbacks=[first])
    assert first.step == 4
    assert (run_dir / rundir.RUN_MARKER).is_file()
    resumed, reference = losses(run_dir), losses(straight)
    assert sorted(resumed) == list(range(1, 9))  # the lines of steps 5.. from the crashed launch are gone
    torch.testing.assert_close(torch.tensor([resumed[s] for s in range(1, 9)]),
                               torch.tensor([reference[s] for s in range(1, 9)]), rtol=1e-5, atol=1e-5)
    assert [p.name for p in rundir.complete_checkpoints(run_dir)] == ["checkpoint-6", "checkpoint-8"]
    assert all((p / rundir.CHECKPOINT_MARKER).is_file() for p in (run_dir / "checkpoints").glob("checkpoint-*"))


def test_no_secret_reaches_the_run_dir_and_wandb_offline_holds_the_hashes(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "placeholder")  # restored after the test
    monkeypatch.setenv("WANDB_SILENT", "true")
    token, key = "hf_TESTSECRET_7f3a9c1e5b2d", "wandb_TESTSECRET_0123456789abcdef"
    cfg = write_config(
        tmp_path, model_dir,
        training={"max_steps": 4},
        extra={"model": {"path": str(model_dir), "token": token},
               "tracking": {"log_every": 1, "progress_bar": False,
                            "wandb": {"project": "runner-tests", "mode": "offline", "api_key": key}},
               "output": {"save_every": 2}},
    )
    plan = make_plan(cfg)
    assert plan.secrets == {"model.token": token, "tracking.wandb.api_key": key}
    run_dir = run(plan)
    assert list((run_dir / "checkpoints").rglob("training_args.bin")), "checkpoints pickle TrainingArguments"
    assert rundir.files_containing(run_dir, [token, key]) == []

    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    stored = json.loads((run_dir / "plan.json").read_text())
    for name in ("config", "data", "plan"):
        assert rundir.files_containing(offline[0], [stored["hashes"][name]]), f"{name} hash not in the W&B run"
    assert stored["launch"]["wandb_run_id"] in offline[0].name
