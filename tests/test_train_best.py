"""During training: evaluations and checkpoints per epoch, early stopping and the best checkpoint
(training.evals_per_epoch, output.saves_per_epoch, training.early_stopping, output.keep_best).

The tiny runs evaluate on data unlike what they train on (alpaca instructions while memorising the
identity rows) at a learning rate high enough that the eval loss falls for a few steps and then
rises: early stopping has something to stop and keep_best a best step to find. Every expected step
is computed here from the eval losses the run logged in metrics.jsonl, never written down."""

import json

import pytest
import torch
from safetensors.torch import load_file

from runner import rundir
from runner.errors import ConfigErrors
from runner.plan.resolve import make_plan
from runner.train.command import run
from tests.situations import runtime
from tests.test_reliability_kill import adapter_weights, killed_launch, train_losses
from tests.tiny_model import SHARED_DATA, save_tiny_model, write_config

torch.set_num_threads(1)

UNLIKE = {"eval_datasets": [{"path": str(SHARED_DATA / "alpaca_en_demo.json"), "format": "alpaca", "num_samples": 8}]}
RISING = {"max_steps": 16, "learning_rate": 0.05, "eval_every": 1}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("best") / "model")


def config(directory, model_dir, training=None, output=None, adapter=None):
    return write_config(directory, model_dir, training={**RISING, **(training or {})}, adapter=adapter,
                        extra={**UNLIKE, "output": output or {}})


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def periodic_evals(run_dir) -> dict:
    """step -> eval_loss of the evaluations during training (the final evaluation repeats the last step)."""
    out = {}
    for row in metrics(run_dir):
        if row.get("kind") == "eval":
            out.setdefault(row["step"], row["eval_loss"])
    return out


def patience_counts(evals: dict, min_delta: float = 0.0) -> dict:
    """step -> evaluations in a row that have not beaten the best so far by more than min_delta,
    after that step's evaluation: the rule, written out independently of the Trainer's callback."""
    best, waited, out = None, 0, {}
    for step in sorted(evals):
        value = evals[step]
        waited = 0 if best is None or (value < best and best - value > min_delta) else waited + 1
        best = value if best is None or value < best else best
        out[step] = waited
    return out


def expected_stop(evals: dict, patience: int) -> int | None:
    return next((step for step, waited in sorted(patience_counts(evals).items()) if waited >= patience), None)


def test_early_stopping_stops_a_run_whose_eval_loss_rises(tmp_path, model_dir):
    run_dir = run(make_plan(config(tmp_path / "es", model_dir, training={"early_stopping": {"patience": 3}})))
    evals = periodic_evals(run_dir)
    stop = expected_stop(evals, patience=3)
    assert stop is not None and stop < RISING["max_steps"], evals
    assert max(evals) == stop  # no evaluation after the stop
    steps = [r["step"] for r in metrics(run_dir) if r.get("kind") == "train"]
    assert steps[-1] == stop
    done = json.loads((run_dir / rundir.RUN_MARKER).read_text())
    assert done["steps"] == stop and done["stopped_early_at"] == stop
    assert json.loads((run_dir / "plan.json").read_text())["launch"]["outcome"]["stopped_early_at"] == stop
    assert f"stopped early at step {stop}" in (run_dir / "README.md").read_text()


def test_keep_best_makes_the_lowest_eval_loss_checkpoint_the_final_adapter(tmp_path, model_dir):
    plan = make_plan(config(tmp_path / "best", model_dir, training={"eval_every": 2, "max_steps": 12},
                            output={"keep_best": True, "save_total_limit": 1}))
    assert plan.output.keep_best
    run_dir = run(plan)
    evals = periodic_evals(run_dir)
    assert sorted(evals) == [2, 4, 6, 8, 10, 12]
    best = min(evals, key=evals.get)
    assert best < 12, f"the eval loss should rise after a few steps here: {evals}"
    kept = [p.name for p in rundir.complete_checkpoints(run_dir)]
    assert kept == [f"checkpoint-{best}", "checkpoint-12"]  # the best survives save_total_limit: 1
    final = adapter_weights(run_dir)
    at_best = load_file(str(run_dir / "checkpoints" / f"checkpoint-{best}" / "adapter_model.safetensors"))
    last = load_file(str(run_dir / "checkpoints" / "checkpoint-12" / "adapter_model.safetensors"))
    assert sorted(final) == sorted(at_best)
    assert all(torch.equal(final[k], at_best[k]) for k in final)
    assert not all(torch.equal(final[k], last[k]) for k in final)
    done = json.loads((run_dir / rundir.RUN_MARKER).read_text())
    assert done["best"]["step"] == best and done["best"]["metric"] == "eval_loss"
    assert done["best"]["value"] == pytest.approx(evals[best]) and done["final_eval_loss"] == pytest.approx(evals[best], rel=1e-3)
    assert json.loads((run_dir / "plan.json").read_text())["launch"]["outcome"]["best"]["step"] == best
    assert f"the best checkpoint, step {best} of 12" in (run_dir / "README.md").read_text()


def test_kill_minus_nine_then_resume_keeps_the_patience_counter(tmp_path, model_dir):
    """The uninterrupted run stops at step S after `patience` evaluations without improvement; a run
    killed just before S's evaluation resumes from a checkpoint whose counter is already > 0. A
    counter restarted at zero would stop later, with other weights."""
    training = {"early_stopping": {"patience": 3}, "gradient_accumulation": 2, "micro_batch_size": 2,
                "lr_scheduler": "cosine", "warmup_steps": 2}
    adapter = {"dropout": 0.1}
    output = {"save_every": 2}
    straight = run(make_plan(config(tmp_path / "straight", model_dir, training, output, adapter)))
    stop = json.loads((straight / rundir.RUN_MARKER).read_text())["stopped_early_at"]
    assert stop is not None and stop < RISING["max_steps"]
    last_save = max(range(2, stop, 2))
    counter_then = patience_counts(periodic_evals(straight))[last_save]
    assert counter_then > 0, f"the patience counter should be running at checkpoint-{last_save}"

    cfg = config(tmp_path / "killed", model_dir, training, output, adapter)
    killed_launch(cfg, "step", stop, tmp_path / "killed.log")  # at the end of step S, before its evaluation
    run_dir = tmp_path / "killed" / "run"
    assert not (run_dir / rundir.RUN_MARKER).exists()
    newest = rundir.complete_checkpoints(run_dir)[-1]
    assert newest.name == f"checkpoint-{last_save}"
    state = json.loads((newest / "trainer_state.json").read_text())
    stored = state["stateful_callbacks"]["RunnerEarlyStopping"]["attributes"]["early_stopping_patience_counter"]
    assert stored == counter_then

    resumed = run(make_plan(cfg))
    assert json.loads((resumed / rundir.RUN_MARKER).read_text())["stopped_early_at"] == stop
    expected, got = adapter_weights(straight), adapter_weights(resumed)
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) for k in got), "the resumed adapter differs from the uninterrupted run's"
    assert train_losses(resumed) == train_losses(straight)


def test_per_epoch_cadences_become_steps_from_the_real_step_count(tmp_path, model_dir):
    cfg = write_config(tmp_path / "epochs", model_dir, training={"max_steps": None, "epochs": 2, "micro_batch_size": 2,
                                                                 "evals_per_epoch": 3},
                       extra={**UNLIKE, "output": {"saves_per_epoch": 2}})
    plan = make_plan(cfg)
    # 8 rows, 2 a batch, one process: 4 steps an epoch; 3 evaluations an epoch: every step (4 // 3)
    decided = runtime(plan, train_rows=8)
    assert (decided.steps_per_epoch, decided.eval_steps, decided.save_steps) == (4, 1, 2)
    decided = runtime(plan, train_rows=40)
    assert (decided.steps_per_epoch, decided.eval_steps, decided.save_steps) == (20, 6, 10)
    run_dir = run(plan)
    assert sorted(periodic_evals(run_dir)) == list(range(1, 9))
    stored = json.loads((run_dir / "plan.json").read_text())["runtime"]
    assert (stored["eval_steps"], stored["save_steps"]) == (1, 2)


@pytest.mark.parametrize("training, output, message", [
    ({"eval_every": 2, "evals_per_epoch": 2}, {}, "eval_every and evals_per_epoch are both set"),
    ({}, {"save_every": 2, "saves_per_epoch": 2}, "save_every and saves_per_epoch are both set"),
    ({"eval_every": None, "early_stopping": {"patience": 2}}, {}, "needs evaluations during training"),
    ({"early_stopping": {"patience": 2, "metric": "eval_rewards/accuracies"}}, {}, "stage sft evaluates eval_loss only"),
    ({"early_stopping": {"patience": 2, "metric": "eval_logps/chosen"}}, {}, "cannot tell whether a higher"),
    ({"eval_every": 2}, {"keep_best": True, "save_every": 3}, "keep_best checkpoints at every evaluation"),
])
def test_evaluation_settings_that_cannot_work_are_refused(tmp_path, model_dir, training, output, message):
    with pytest.raises(ConfigErrors, match=message.replace("(", r"\(")):
        make_plan(config(tmp_path / "bad", model_dir, training, output))


def test_early_stopping_and_keep_best_without_eval_data_are_refused(tmp_path, model_dir):
    cfg = write_config(tmp_path / "noeval", model_dir, training={"early_stopping": {"patience": 2}},
                       extra={"output": {"keep_best": True}})
    with pytest.raises(ConfigErrors) as err:
        make_plan(cfg)
    assert [e.message.split(":")[0] for e in err.value.errors] == ["training.early_stopping", "output.keep_best"]
    assert all("no eval data" in e.message for e in err.value.errors)


def test_early_stopping_and_keep_best_join_the_config_hash(tmp_path, model_dir):
    base = make_plan(config(tmp_path / "a", model_dir)).hashes.config
    stopping = make_plan(config(tmp_path / "b", model_dir, training={"early_stopping": {"patience": 2}}))
    best = make_plan(config(tmp_path / "c", model_dir, output={"keep_best": True}))
    assert len({base, stopping.hashes.config, best.hashes.config}) == 3
    assert stopping.training.early_stopping.metric == "eval_loss" and stopping.training.early_stopping.mode == "min"
    maxed = make_plan(config(tmp_path / "d", model_dir, training={
        "stage": "sft", "early_stopping": {"patience": 2, "metric": "loss", "mode": "max"}}))
    assert maxed.training.early_stopping.mode == "max"
