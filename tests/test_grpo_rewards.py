"""GRPO's rewards without training: lint finds a missing reward file or function (exit 2, naming
the key), the built-ins score real completions (math_verify's accuracy among them), a user function's
signature is checked before any step, prompts come from every conversation format with their
reference, and an Axolotl `rl: grpo` config imports into one that lints."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner.errors import UserError
from runner.plan.resolve import make_plan
from runner.train.rewards import build_rewards, check_signature

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _config(tmp_path, rewards, stage="grpo", extra_training=None, **grpo):
    cfg = {
        "model": {"path": str(REPO / "tests" / "fixtures" / "configs" / "tiny-model")},
        "datasets": [{"path": str(SHARED / "identity.json"), "format": "alpaca", "num_samples": 4}],
        "template": {"name": "chatml"},
        "sequence": {"max_length": 128},
        "training": {"stage": stage, "micro_batch_size": 4, "gradient_accumulation": 1,
                     "grpo": {"num_generations": 4, "max_completion_length": 16, "rewards": rewards, **grpo},
                     **(extra_training or {})},
        "output": {"dir": str(tmp_path / "run")},
    }
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _lint(path):
    return subprocess.run([sys.executable, "-m", "runner", "lint", str(path)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_lint_refuses_a_missing_reward_file_or_function(tmp_path):
    (tmp_path / "rewards.py").write_text("import re\n\ndef brevity(completions, **kwargs):\n    return [0.0]\n")
    ok = _lint(_config(tmp_path, [{"function": "rewards.py:brevity"}]))
    assert ok.returncode == 0, ok.stderr

    missing_file = _lint(_config(tmp_path, [{"function": "nowhere.py:brevity"}]))
    assert missing_file.returncode == 2
    assert "training.grpo.rewards.0.function" in missing_file.stderr and "not found" in missing_file.stderr
    assert "Traceback" not in missing_file.stderr

    missing_fn = _lint(_config(tmp_path, [{"function": "rewards.py:length"}]))
    assert missing_fn.returncode == 2 and "defines no function 'length'" in missing_fn.stderr

    # the file is parsed, never run: a module that would fail on import still lints by its names
    (tmp_path / "boom.py").write_text("raise SystemExit('imported!')\ndef r(completions, **kw):\n    return []\n")
    assert _lint(_config(tmp_path, [{"function": "boom.py:r"}])).returncode == 0

    unknown = _lint(_config(tmp_path, [{"function": "accuracyy"}]))
    assert unknown.returncode == 2 and "unknown reward 'accuracyy'" in unknown.stderr
    none = _lint(_config(tmp_path, []))
    assert none.returncode == 2 and "at least one reward" in none.stderr
    no_pattern = _lint(_config(tmp_path, [{"function": "format"}]))
    assert no_pattern.returncode == 2 and "needs args.pattern" in no_pattern.stderr
    no_room = _lint(_config(tmp_path, [{"function": "think_format"}], max_completion_length=128))
    assert no_room.returncode == 2 and "leaves no room for a prompt" in no_room.stderr


def test_builtin_rewards_score_real_completions(tmp_path):
    plan = make_plan(_config(tmp_path, [
        {"function": "accuracy"}, {"function": "exact_match", "args": {"ignore_case": True}},
        {"function": "format", "args": {"pattern": r"\\boxed\{"}, "name": "boxed"},
        {"function": "think_format"}, {"function": "soft_overlong", "args": {"cache": 4}}]))
    accuracy, exact, boxed, think, overlong = build_rewards(plan, tokenizer=None)
    assert [f.__name__ for f in (accuracy, exact, boxed, think, overlong)] == [
        "accuracy", "exact_match", "boxed", "think_format", "soft_overlong"]
    completions = ["<think>3 times 4</think> The answer is $\\boxed{12}$.", "It is \\boxed{13}.", "Twelve"]
    reference = ["$12$", "$12$", "twelve"]
    # a reference math_verify cannot parse ("twelve") scores None: TRL leaves the completion out
    assert accuracy(completions=completions, reference=reference) == [1.0, 0.0, None]
    assert exact(completions=completions, reference=reference) == [0.0, 0.0, 1.0]
    assert exact(completions=["x"], reference=[""]) == [None]  # no reference: the row is skipped
    assert boxed(completions=completions) == [1.0, 1.0, 0.0]
    assert think(completions=completions) == [1.0, 0.0, 0.0]
    # max_completion_length 16, cache 4: no penalty up to 12 tokens, then linear down to -1
    assert overlong(completion_ids=[[1] * 10, [1] * 14, [1] * 16]) == [0.0, -0.5, -1.0]


def test_a_user_reward_is_loaded_from_the_config_folder_and_checked_before_any_step(tmp_path):
    (tmp_path / "mine.py").write_text(
        "def shouting(completions, scale=1.0, **kwargs):\n"
        "    return [scale * sum(c.isupper() for c in t) / max(len(t), 1) for t in completions]\n"
        "def no_kwargs(completions):\n    return [0.0 for _ in completions]\n"
        "def needs_more(completions, answer_key, **kwargs):\n    return [0.0 for _ in completions]\n"
        "def broken(completions, **kwargs):\n    return 1 / 0\n")
    plan = make_plan(_config(tmp_path, [{"function": "mine.py:shouting", "args": {"scale": 2.0}, "name": "loud"}]))
    (fn,) = build_rewards(plan, tokenizer=None)
    assert fn.__name__ == "loud"
    assert fn(prompts=["p", "p"], completions=["AB", "ab"], completion_ids=[[1], [2]], reference=["", ""],
              trainer_state=None) == [2.0, 0.0]
    for name, message in (("no_kwargs", "must accept \\*\\*kwargs"), ("needs_more", "needs an argument 'answer_key'")):
        plan = make_plan(_config(tmp_path, [{"function": f"mine.py:{name}"}]))
        with pytest.raises(UserError, match=message):
            build_rewards(plan, tokenizer=None)
    plan = make_plan(_config(tmp_path, [{"function": "mine.py:broken"}]))
    (fn,) = build_rewards(plan, tokenizer=None)
    with pytest.raises(UserError, match="mine.py:broken raised ZeroDivisionError"):
        fn(prompts=["p"], completions=["c"], completion_ids=[[1]], reference=[""])
    check_signature(lambda **kwargs: [], "lambda", "here")  # everything through **kwargs is fine


def test_prompts_from_each_conversation_format_end_at_the_last_user_turn(tmp_path):
    from runner.data.build import build_datasets

    rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                               {"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"}]},
            {"conversations": [{"from": "human", "value": "Only a question"}]}]
    data = tmp_path / "chat.json"
    data.write_text(json.dumps(rows))
    path = _config(tmp_path, [{"function": "exact_match"}])
    cfg = yaml.safe_load(path.read_text())
    cfg["datasets"] = [{"path": str(data), "format": "sharegpt"},
                       {"path": str(SHARED / "dpo_en_demo.json"), "format": "preference", "num_samples": 2}]
    cfg["data"] = {"cache_dir": str(tmp_path / "cache"), "shuffle": False}
    cfg["sequence"] = {"max_length": 512}
    path.write_text(yaml.safe_dump(cfg))
    train = build_datasets(make_plan(path)).train
    assert set(train.column_names) == {"prompt", "reference", "prompt_input_ids"}
    first = train[0]
    assert first["prompt"].endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert "Hello" in first["prompt"] and first["reference"] == "4"
    assert train[1]["reference"] == "" and train[1]["prompt"].endswith("<|im_start|>assistant\n")
    chosen = {row["chosen"]["value"] for row in json.loads((SHARED / "dpo_en_demo.json").read_text())}
    assert len(train) == 4 and {train[2]["reference"], train[3]["reference"]} <= chosen


def test_axolotl_grpo_config_imports_and_lints(tmp_path):
    from runner.importers import import_config
    from runner.plan.lint import lint_files

    (tmp_path / "rewards.py").write_text("def correct(completions, **kwargs):\n    return [0.0] * len(completions)\n")
    (tmp_path / "data.json").write_text((SHARED / "alpaca_en_demo.json").read_text())
    source = tmp_path / "grpo.yml"
    source.write_text(yaml.safe_dump({
        "base_model": "Qwen/Qwen2.5-0.5B-Instruct", "rl": "grpo", "chat_template": "qwen_25",
        "datasets": [{"path": "data.json", "type": "alpaca"}],
        "trl": {"beta": 0.001, "num_generations": 4, "max_completion_length": 64, "use_vllm": True,
                "reward_funcs": ["rewards.correct"], "reward_weights": [2.0], "loss_type": "dr_grpo",
                "scale_rewards": False},
        "adapter": "lora", "lora_r": 8, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
        "learning_rate": 1e-5, "output_dir": "./out"}))
    result = import_config("axolotl", source, tmp_path)
    assert result.errors == []
    out = tmp_path / "imported.yaml"
    out.write_text(result.text)
    lint = lint_files([out])[0]
    assert lint.errors == [], [str(e) for e in lint.errors]
    grpo = yaml.safe_load(result.text)["training"]["grpo"]
    assert yaml.safe_load(result.text)["training"]["stage"] == "grpo"
    assert grpo["rewards"] == [{"function": "rewards.py:correct", "weight": 2.0}]
    assert (grpo["beta"], grpo["num_generations"], grpo["max_completion_length"]) == (0.001, 4, 64)
    assert (grpo["loss_type"], grpo["scale_rewards"]) == ("dr_grpo", "none")
    assert "trl.use_vllm" in result.translation.unmapped_keys()


def test_a_run_planned_before_stage_grpo_existed_is_not_a_changed_run(tmp_path):
    """training.grpo (and any setting added later) at its default is not a difference from a
    plan.json written without it; a value set on purpose still is."""
    from runner.rundir import plan_differences

    path = _config(tmp_path, [], stage="sft")
    cfg = yaml.safe_load(path.read_text())
    del cfg["training"]["grpo"]
    path.write_text(yaml.safe_dump(cfg))
    plan = make_plan(path).to_dict()
    stored = copy.deepcopy(plan)
    del stored["config"]["training"]["grpo"]
    assert plan_differences(stored, plan) == []
    changed = make_plan(path, ["training.grpo.beta=0.5"]).to_dict()
    assert plan_differences(stored, changed) == ["training.grpo.beta: '<unset>' -> 0.5"]


def test_the_stage_builds_trl_grpo_config_and_refuses_a_group_that_does_not_divide_the_step(tmp_path):
    from situations import runtime

    import runner.train.stages as stages
    from runner.train.arguments import common_arguments

    path = _config(tmp_path, [{"function": "think_format", "weight": 0.5}, {"function": "exact_match"}],
                   loss_type="dr_grpo", beta=0.04, epsilon_high=0.28, scale_rewards="none")
    plan = make_plan(path)
    stage = stages.get("grpo")
    stage.check(plan)
    args = stage.arguments(plan, common_arguments(plan, runtime(plan), output_dir=str(tmp_path), has_eval=False))
    assert type(args).__name__ == "GRPOConfig"
    assert (args.num_generations, args.max_completion_length, args.loss_type, args.beta) == (4, 16, "dr_grpo", 0.04)
    assert (args.epsilon_high, args.scale_rewards, args.reward_weights) == (0.28, "none", [0.5, 1.0])
    assert args.per_device_train_batch_size == 4 and args.generation_batch_size == 4
    assert plan.training.collator == "prompt" and plan.data.prompt_budget == 128 - 16
    with pytest.raises(UserError, match="must divide the completions of one optimizer step"):
        stage.check(make_plan(path, ["training.micro_batch_size=3"]))
    with pytest.raises(UserError, match="beta > 0 with adapter.kind full"):
        stage.check(make_plan(path, ["adapter.kind=full"]))
    # an epoch is every prompt sampled num_generations times: 4 rows x 4 / (4 per step) = 4 steps
    from runner.train.runtime import steps_per_epoch

    assert steps_per_epoch(plan, 4, 1) == 4


def test_editing_a_reward_file_changes_the_config_hash_moving_the_config_does_not(tmp_path):
    (tmp_path / "r.py").write_text("def r(completions, **kwargs):\n    return [0.0 for _ in completions]\n")
    path = _config(tmp_path, [{"function": "r.py:r"}])
    before = make_plan(path).hashes.config
    (tmp_path / "r.py").write_text("def r(completions, **kwargs):\n    return [1.0 for _ in completions]\n")
    edited = make_plan(path).hashes.config
    assert edited != before
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "r.py").write_text((tmp_path / "r.py").read_text())
    (other / "grpo.yaml").write_text(path.read_text())
    assert make_plan(other / "grpo.yaml").hashes.config == edited


def test_loss_png_gets_a_reward_panel_for_grpo(tmp_path):
    from PIL import Image

    from runner.train.metrics import plot_losses, reward_series

    rows = [{"kind": "train", "step": s, "loss": 0.1, "reward": 0.2 * s, "rewards/brevity/mean": 0.1 * s,
             "rewards/brevity/std": 0.3, "rewards/chosen": 1.0} for s in (1, 2, 3)]
    assert reward_series(rows) == {"total reward": [(1, 0.2), (2, 0.4), (3, 0.6000000000000001)],
                                   "brevity": [(1, 0.1), (2, 0.2), (3, 0.30000000000000004)]}
    grpo, sft = tmp_path / "grpo.jsonl", tmp_path / "sft.jsonl"
    grpo.write_text("\n".join(json.dumps(r) for r in rows))
    sft.write_text("\n".join(json.dumps({"kind": "train", "step": s, "loss": 0.1}) for s in (1, 2, 3)))
    assert plot_losses(grpo, tmp_path / "grpo.png") and plot_losses(sft, tmp_path / "sft.png")
    # two panels (loss above, rewards below) make a taller figure than the loss alone
    assert Image.open(tmp_path / "grpo.png").size[1] > Image.open(tmp_path / "sft.png").size[1]
