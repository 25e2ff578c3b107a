"""The sweep file: W&B's format validated by schemas/sweep.schema.json, dotted config keys checked
against the config schema, and the search space (grid points, sampled distributions, corners)."""

import math
import statistics
from collections import Counter

import pytest

from runner.errors import ConfigErrors, UserError
from runner.sweep.space import _beta_cdf, _beta_ppf, corner_points, grid_points, load_sweep, sample


def write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def errors_of(tmp_path, text) -> str:
    with pytest.raises((ConfigErrors, UserError)) as info:
        load_sweep(write(tmp_path, text))
    return str(info.value)


def test_nested_parameters_become_dotted_keys_and_kinds_follow_wandb_rules(tmp_path):
    sweep = load_sweep(write(tmp_path, """
method: random
metric: {name: eval_loss}
parameters:
  adapter:
    parameters:
      r: {values: [4, 8]}
      dropout: {min: 0.0, max: 0.2}
  training.epochs: {min: 1, max: 3}
  training.seed: {value: 7}
  datasets.0.num_samples: {distribution: q_uniform, min: 10, max: 30, q: 10}
"""))
    assert [(p.name, p.kind) for p in sweep.params] == [
        ("adapter.r", "categorical"), ("adapter.dropout", "uniform"), ("training.epochs", "int_uniform"),
        ("training.seed", "constant"), ("datasets.0.num_samples", "q_uniform")]
    assert sweep.goal == "minimize"
    assert sweep.params[4].choices() == [10, 20, 30]


@pytest.mark.parametrize("text,expected", [
    ("method: grid\nparameters: {adapter.r: {values: [1]}}\nmetrik: {name: x}\n", "unknown key 'metrik'"),
    ("method: sideways\nparameters: {adapter.r: {values: [1]}}\n", "method"),
    ("method: grid\nparameters: {}\n", "parameters"),
    ("method: grid\nparameters: {training.lr: {values: [1.0e-4]}}\n", "did you mean 'training.learning_rate'"),
    ("method: grid\nparameters: {adapter.rank: {values: [8]}}\n", "did you mean 'adapter.r'"),
    ("method: grid\nparameters: {training.learning_rate: {min: 1.0e-5, max: 1.0e-3}}\n", "grid search needs a finite set"),
    ("method: bayes\nparameters: {adapter.r: {values: [4, 8]}}\n", "bayes search needs a metric"),
    ("method: random\nparameters: {adapter.r: {min: 9, max: 3}}\n", "min 9 is above max 3"),
    ("method: random\nparameters: {training.learning_rate: {distribution: log_uniform_values, min: 0, max: 1}}\n",
     "needs min > 0"),
    ("method: random\nparameters: {adapter.r: {values: [4, 8], probabilities: [0.5]}}\n", "1 probabilities for 2 values"),
    ("method: random\nparameters: {adapter.r: {values: [4, 8], probabilities: [0.5, 0.6]}}\n", "add up to"),
    ("method: random\nearly_terminate: {type: hyperband, min_iter: 1}\nparameters: {adapter.r: {values: [4]}}\n",
     "early_terminate needs a metric"),
    ("method: random\nparameters: {adapter.r: {values: [4]}, adapter: {parameters: {r: {values: [8]}}}}\n", "given twice"),
])
def test_bad_sweep_files_are_reported_with_the_reason(tmp_path, text, expected):
    message = errors_of(tmp_path, text)
    assert expected in message
    assert "sweep.yaml:" in message  # file:line of the problem


def test_grid_points_cover_every_combination_in_file_order(tmp_path):
    sweep = load_sweep(write(tmp_path, """
method: grid
parameters:
  adapter.r: {values: [4, 8]}
  training.learning_rate: {values: [1.0e-4, 1.0e-3, 1.0e-2]}
  training.seed: {value: 3}
  adapter.target_modules: {values: [[q_proj, v_proj]]}
"""))
    points = grid_points(sweep)
    assert len(points) == sweep.grid_size() == 6
    assert points[0][0] == {"adapter.r": 4, "training.learning_rate": 1e-4, "training.seed": 3,
                            "adapter.target_modules": ["q_proj", "v_proj"]}
    assert points[-1][0]["adapter.r"] == 8 and points[-1][0]["training.learning_rate"] == 1e-2
    assert len({tuple(map(str, v.values())) for v, _ in points}) == 6


def test_sampled_values_respect_each_distribution(tmp_path):
    import optuna

    sweep = load_sweep(write(tmp_path, """
method: random
parameters:
  adapter.r: {distribution: int_uniform, min: 2, max: 6}
  training.learning_rate: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-3}
  training.weight_decay: {distribution: q_uniform, min: 0, max: 0.1, q: 0.05}
  training.adam_beta1: {distribution: beta, a: 2, b: 5}
  training.neftune_noise_alpha: {distribution: normal, mu: 5, sigma: 1}
  training.max_grad_norm: {distribution: log_uniform, min: -2, max: 0}
  adapter.target_modules: {values: [[q_proj], all-linear], probabilities: [0.9, 0.1]}
"""))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    rows = []
    for _ in range(300):
        trial = study.ask()
        rows.append(sample(sweep, trial))
        study.tell(trial, 0.0)
    rs = [r["adapter.r"] for r in rows]
    assert set(rs) == {2, 3, 4, 5, 6} and all(isinstance(r, int) for r in rs)
    lrs = [r["training.learning_rate"] for r in rows]
    assert all(1e-5 <= x <= 1e-3 for x in lrs)
    assert sum(x < 1e-4 for x in lrs) > 90  # log-uniform: half the mass below the geometric middle
    assert {r["training.weight_decay"] for r in rows} == {0, 0.05, 0.1}
    betas = [r["training.adam_beta1"] for r in rows]
    assert all(0 < b < 1 for b in betas) and abs(statistics.mean(betas) - 2 / 7) < 0.04
    normal = [r["training.neftune_noise_alpha"] for r in rows]
    assert abs(statistics.mean(normal) - 5) < 0.25 and 0.8 < statistics.stdev(normal) < 1.2
    assert all(math.exp(-2) - 1e-12 <= r["training.max_grad_norm"] <= 1 for r in rows)
    picks = Counter(str(r["adapter.target_modules"]) for r in rows)
    assert picks["['q_proj']"] > 240


def test_corners_hold_each_bound(tmp_path):
    sweep = load_sweep(write(tmp_path, """
method: bayes
metric: {name: eval_loss}
parameters:
  adapter.r: {values: [4, 8, 16]}
  training.learning_rate: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-3}
"""))
    corners = corner_points(sweep)
    assert {c["adapter.r"] for c in corners} == {4, 8, 16}
    assert {c["training.learning_rate"] for c in corners} == {1e-5, 1e-3}


@pytest.mark.parametrize("a,b", [(1, 1), (2, 2), (2, 5), (0.5, 0.5)])
def test_beta_quantile_inverts_the_cdf(a, b):
    for u in (0.01, 0.3, 0.5, 0.9, 0.999):
        assert abs(_beta_cdf(_beta_ppf(u, a, b), a, b) - u) < 1e-6
    if a == b:
        assert abs(_beta_ppf(0.5, a, b) - 0.5) < 1e-6
