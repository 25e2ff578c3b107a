"""QLoRA on CPU (bitsandbytes 4-bit) trains and saves; `runner merge` writes a sharded standalone
model (merged into the unquantized base) that AutoModelForCausalLM loads; `runner generate`
renders prompts with the training template and answers, with -p and interactively."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from runner import data as pipeline
from runner.cli import main
from runner.errors import UserError
from runner.serve.generate import load_for_generation, prompt_inputs
from runner.ship.merge import merge_run
from runner.ship.prompt import strip_prelude, template_for_run
from runner.plan.resolve import make_plan
from runner.train.command import run
from tests.tiny_model import logits_of, probe_ids, reload_logits, save_tiny_model, train_losses, write_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden=64)


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, model_dir):
    tmp = tmp_path_factory.mktemp("qlora")
    cfg = write_config(tmp, model_dir, training={"max_steps": 12, "micro_batch_size": 8, "learning_rate": 2e-2},
                       dataset={"num_samples": 4},
                       extra={"quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True},
                              "template": {"name": "tokenizer", "system_prompt": "You are a tiny test model."}})
    return run(make_plan(cfg))


def test_qlora_trains_on_cpu_and_saves_an_adapter(qlora_run):
    losses = train_losses(qlora_run)
    assert all(l == l for l in losses) and losses[-1] < losses[0]
    plan = json.loads((qlora_run / "plan.json").read_text())
    assert plan["quantization"]["bits"] == 4 and plan["runtime"]["dtype"] == "float32"
    assert (qlora_run / "adapter_model.safetensors").is_file()
    config = json.loads((qlora_run / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_merge_of_a_qlora_run_is_a_sharded_model_equal_to_base_plus_adapter(qlora_run, model_dir, tmp_path):
    out = tmp_path / "merged"
    assert main(["merge", str(qlora_run), "--out", str(out), "--max-shard-size", "100KB"]) == 0
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not hasattr(merged.config, "quantization_config")
    assert all(type(m).__name__ != "Linear4bit" for m in merged.modules())
    # Merged weights = unquantized base + the trained LoRA delta, in the plan's dtype.
    torch.testing.assert_close(logits_of(merged, probe_ids()), reload_logits(qlora_run, model_dir), rtol=1e-4, atol=1e-4)
    assert (out / "tokenizer.json").is_file()


def test_merge_refuses_a_full_fine_tune(tmp_path, model_dir):
    run_dir = run(make_plan(write_config(tmp_path, model_dir, adapter={"kind": "full"}, training={"max_steps": 1})))
    with pytest.raises(UserError, match="nothing to merge"):
        merge_run(run_dir)


def test_generate_uses_the_training_template_and_system_prompt(qlora_run):
    model, tokenizer, plan = load_for_generation(qlora_run)
    assert not model.training and model.config.use_cache
    trained = pipeline.load_tokenizer(plan)
    # The training template, behind the prelude that applies the training system prompt (runner.ship.prompt).
    assert strip_prelude(tokenizer.chat_template) == trained.chat_template
    assert tokenizer.chat_template == template_for_run(plan, trained)
    ids = prompt_inputs(tokenizer, [{"role": "user", "content": "Who are you?"}],
                        system=plan.data.template.system_prompt, plan=plan)["input_ids"][0]
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a tiny test model.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")


def test_generate_cli_answers_with_p_and_interactively(qlora_run, capsys, monkeypatch):
    assert main(["generate", str(qlora_run), "-p", "Who are you?", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip()
    lines = iter(["Who are you?", "/reset", "Who made you?", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["generate", str(qlora_run), "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.count("model>") == 2


def test_a_plan_json_this_runner_cannot_read_is_a_clear_error(tmp_path):
    from runner.cli import main

    (tmp_path / "plan.json").write_text('{"name": "old", "training": {"trainer": "sft"}}')
    (tmp_path / "adapter_config.json").write_text("{}")
    assert main(["merge", str(tmp_path)]) == 2
    (tmp_path / "plan.json").write_text("{not json")
    assert main(["merge", str(tmp_path)]) == 2
