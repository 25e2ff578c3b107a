"""End to end: a 2 x 2 grid sweep trains a tiny random Llama four times through runner.train.command; killed
after two trials, the same command finishes only the remaining two. The best config lints and
reproduces its trial's plan hash."""

import json
from pathlib import Path

import pytest

from runner.plan.lint import lint_files
from runner.plan.resolve import make_plan
from runner.sweep.command import run_sweep
from runner.sweep.local import train_trial
from tests.tiny_model import save_tiny_model, write_config

GRID = """
method: grid
metric: {name: eval_loss, goal: minimize}
parameters:
  adapter.r: {values: [2, 8]}
  training.learning_rate: {values: [1.0e-3, 1.0e-2]}
"""


class Counting:
    """The default trial (real training), counted; raises KeyboardInterrupt at call `kill_at`."""

    def __init__(self, kill_at=None):
        self.runs, self.kill_at = [], kill_at

    def __call__(self, plan, report):
        if self.kill_at is not None and len(self.runs) == self.kill_at:
            raise KeyboardInterrupt
        self.runs.append(plan.hashes.plan)
        return train_trial(plan, report)


def test_grid_sweep_trains_resumes_and_reproduces_the_best(tmp_path, shared_data):
    import torch

    torch.set_num_threads(1)
    model_dir = save_tiny_model(tmp_path / "model")
    config = write_config(tmp_path / "cfg", model_dir, training={"max_steps": 6, "eval_every": 3},
                          extra={"val_size": 2})
    (tmp_path / "grid.yaml").write_text(GRID)
    out = tmp_path / "sweep"

    first = Counting(kill_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, tmp_path / "grid.yaml", out=out, trial_fn=first)
    assert len(first.runs) == 2
    second = Counting()
    result = run_sweep(config, tmp_path / "grid.yaml", out=out, trial_fn=second)
    assert len(second.runs) == 2 and not set(second.runs) & set(first.runs)

    trials = sorted(result.trials, key=lambda t: t.index)
    assert [t.status for t in trials] == ["finished"] * 4
    assert {(t.params["adapter.r"], t.params["training.learning_rate"]) for t in trials} == {
        (2, 1e-3), (2, 1e-2), (8, 1e-3), (8, 1e-2)}
    for t in trials:
        run = Path(t.run_dir)
        stored = json.loads((run / "plan.json").read_text())
        assert stored["hashes"]["plan_static"] == t.plan_hash  # a normal run dir with its own plan hash
        assert stored["adapter"]["r"] == t.params["adapter.r"]
        evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                 if '"eval_loss"' in line]
        assert evals and evals[-1]["eval_loss"] == pytest.approx(t.metric)
    assert len({t.run_dir for t in trials}) == 4
    assert result.best.metric == min(t.metric for t in trials)
    assert "finished (best)" in (out / "trials.md").read_text()
    assert (out / "sweep.png").stat().st_size > 1000
    best = out / "best.yaml"
    assert lint_files([best])[0].errors == []
    assert make_plan(best).hashes.plan == result.best.plan_hash


def test_pruning_callback_stops_training_when_the_pruner_says_so():
    """The TrainerCallback train_trial passes when runner.train.command.run takes `callbacks`: each evaluation
    is reported; a pruned trial asks the Trainer to stop."""
    import optuna
    from transformers import TrainerControl, TrainerState

    from runner.sweep.local import Reporter, _pruning_callback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    report = Reporter(study.ask(), "eval_loss", pruning=True)
    callback, state, control = _pruning_callback(report), TrainerState(), TrainerControl()
    state.global_step = 10
    callback.on_evaluate(None, state, control, metrics={"eval_loss": 0.5})
    assert not control.should_training_stop and report.points == [[1, 0.5]]
    callback.on_evaluate(None, state, control, metrics={"epoch": 1.0})  # no metric: nothing reported
    callback.on_evaluate(None, state, control, metrics={"eval_loss": 3.0})
    assert control.should_training_stop and report.pruned and report.points == [[1, 0.5], [2, 3.0]]
