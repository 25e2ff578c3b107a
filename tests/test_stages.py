"""Stages as objects: every `training.stage` value has its x-stages entry in the schema and its own
file under runner/train/stages/, and nothing else does; each stage builds its real Trainer arguments
from a Plan and a Runtime; importing the stages imports no ML library."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from situations import runtime

import runner.train.stages as stages
from runner.config.schema import load_schema, stages as stage_table
from runner.plan.resolve import make_plan
from runner.train.arguments import common_arguments

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "configs"
ENUM = load_schema()["properties"]["training"]["properties"]["stage"]["enum"]
FILES = sorted(m.name for m in pkgutil.iter_modules(stages.__path__) if m.name != "base")


def test_one_file_and_one_table_entry_per_stage():
    assert sorted(ENUM) == FILES == sorted(stage_table())
    for name in ENUM:
        assert stages.get(name).name == name


def test_stage_files_import_no_ml_library():
    code = ("import sys\nimport runner.train.stages as s\n"
            f"for n in {FILES!r}: s.get(n)\n"
            "print([m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr + out.stdout


@pytest.mark.parametrize("name, config, kind", [
    ("sft", "lora.yaml", "TrainingArguments"), ("pt", "pretrain_packed.yaml", "TrainingArguments"),
    ("dpo", "dpo.yaml", "DPOConfig"), ("kto", "kto.yaml", "KTOConfig"), ("orpo", "orpo.yaml", "ORPOConfig"),
    ("rm", "rm.yaml", "RewardConfig"), ("simpo", "simpo.yaml", "CPOConfig"), ("cpo", "cpo.yaml", "CPOConfig"),
])
def test_each_stage_builds_its_trainer_arguments(tmp_path, name, config, kind):
    plan = make_plan(CONFIGS / config, ["training.micro_batch_size=2"])
    assert plan.training.stage == name
    stage = stages.get(name)
    args = stage.arguments(plan, common_arguments(plan, runtime(plan), output_dir=str(tmp_path), has_eval=False))
    assert type(args).__name__ == kind
    assert args.learning_rate == plan.training.learning_rate and args.seed == plan.training.seed
    assert args.per_device_train_batch_size == 2 and args.use_cpu
    if name == "dpo":
        assert args.beta == plan.training.dpo.beta and args.max_length is None
    if name in ("sft", "pt"):
        assert args.label_names == ["labels"]
    if name == "rm":  # the pipeline truncated; TRL must not drop rows again
        assert args.max_length is None and args.center_rewards_coefficient == 0.01
    if name == "simpo":  # SimPO is CPO's simpo loss without the behaviour-cloning term
        assert (args.loss_type, args.cpo_alpha, args.beta, args.simpo_gamma) == ("simpo", 0.0, 2.5, 1.0)
    if name == "cpo":
        assert (args.loss_type, args.cpo_alpha, args.beta) == ("hinge", 0.5, 0.2)


def test_stage_row_tokens_count_what_goes_through_the_model():
    assert stages.get("sft").row_tokens({"input_ids": [1, 2, 3]}) == 3
    assert stages.get("dpo").row_tokens({"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5]}) == 7
    assert stages.get("kto").row_tokens({"prompt_ids": [1], "completion_ids": [2, 3]}) == 3
    assert stages.get("kto").row_tokens({"prompt_ids": [1], "completion_ids": [2, 3], "KL_completion_ids": [4]}) == 5
    assert stages.get("orpo").row_tokens({"chosen_input_ids": [1, 2], "rejected_input_ids": [1, 3, 4]}) == 5
    for name in ("simpo", "cpo"):
        assert stages.get(name).row_tokens({"chosen_input_ids": [1, 2], "rejected_input_ids": [1, 3, 4]}) == 5
    assert stages.get("rm").row_tokens({"chosen_ids": [1, 2], "rejected_ids": [1, 3, 4]}) == 5


def test_cpo_trainer_imports_from_trl_experimental_within_the_pinned_range():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version
    import trl
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(Requirement(d) for d in deps if Requirement(d).name == "trl")
    assert Version(trl.__version__) in pin.specifier, f"installed trl {trl.__version__} is outside {pin}"
    assert issubclass(stages.get("cpo").trainer_class(), CPOTrainer)
    assert issubclass(stages.get("simpo").trainer_class(), CPOTrainer)
    assert {"simpo", "sigmoid", "hinge", "ipo"} <= set(CPOConfig.__dataclass_fields__["loss_type"].metadata["choices"])


def test_reward_model_refusals_come_before_anything_loads(tmp_path):
    from runner.errors import UserError

    frozen = make_plan(CONFIGS / "rm.yaml", ["adapter.kind=freeze", "adapter.trainable_layers=1"])
    with pytest.raises(UserError, match="score head starts random") as err:
        stages.get("rm").check(frozen)
    assert err.value.where == "adapter.trainable_modules"
    trains_head = tmp_path / "rm_freeze.yaml"
    trains_head.write_text(f"model: {{path: {CONFIGS / 'tiny-model'}}}\n"
                           f"datasets: [{{path: {CONFIGS / 'data' / 'dpo_small.json'}, format: preference}}]\n"
                           "adapter: {kind: freeze, trainable_layers: 1, trainable_modules: ['^score\\.']}\n"
                           "training: {stage: rm}\n")
    stages.get("rm").check(make_plan(trains_head))
    with pytest.raises(UserError, match="score head instead"):
        stages.get("rm").check(make_plan(CONFIGS / "rm.yaml", ["training.liger=true"]))


def test_kto_refuses_a_micro_batch_of_one_before_anything_loads():
    from runner.errors import UserError

    plan = make_plan(CONFIGS / "kto.yaml", ["training.micro_batch_size=1"])
    with pytest.raises(UserError, match="at least 2"):
        stages.get("kto").check(plan)


def test_references_are_loaded_only_without_an_adapter():
    for name, config in (("dpo", "dpo.yaml"), ("kto", "kto.yaml")):
        plan = make_plan(CONFIGS / config)
        assert stages.get(name).needs_reference(plan) is (plan.adapter.kind != "lora")
        full = make_plan(CONFIGS / config, ["adapter.kind=full"])
        assert stages.get(name).needs_reference(full)
    assert not stages.get("orpo").needs_reference(make_plan(CONFIGS / "orpo.yaml", ["adapter.kind=full"]))


def test_lint_refuses_lm_eval_tasks_for_a_reward_model(tmp_path):
    from runner.plan.lint import lint_file

    config = tmp_path / "rm_eval.yaml"
    config.write_text(f"model: {{path: {CONFIGS / 'tiny-model'}}}\n"
                      f"datasets: [{{path: {CONFIGS / 'data' / 'dpo_small.json'}, format: preference}}]\n"
                      "training: {stage: rm}\nevaluation: {tasks: [arc_easy]}\noutput: {merge: true}\n")
    errors = [str(e) for e in lint_file(str(config)).errors]
    assert any("evaluation.tasks" in e and "reward model" in e for e in errors), errors
    assert any("output.merge" in e and "reward model" in e for e in errors), errors


def test_a_run_written_before_these_stages_is_still_the_same_run():
    """plan.json of an earlier runner lacks training.rm / simpo / cpo: at their defaults they are no
    difference (a finished run stays done, an interrupted one resumes); set otherwise they are."""
    from runner.rundir.judge import plan_differences

    new = make_plan(CONFIGS / "dpo.yaml").to_dict()
    stored = {**new, "config": {**new["config"], "training": {
        k: v for k, v in new["config"]["training"].items() if k not in ("rm", "simpo", "cpo")}}}
    assert plan_differences(stored, new) == []
    changed = make_plan(CONFIGS / "dpo.yaml", ["training.simpo.gamma=0.9"]).to_dict()
    assert plan_differences(stored, changed) == ["training.simpo.gamma: '<unset>' -> 0.9"]
