"""The saved chat template prompts the model as training did (runner.ship.prompt): for every
template family runner trains with, `AutoTokenizer.from_pretrained(folder).apply_chat_template`
renders exactly what the data pipeline rendered in training, with the training system prompt
inserted when a conversation has none (folded into the first user turn for templates without a
system role) and a conversation's own system message kept. Then the real run directory, its
merged folder (with its own card) and AutoPeftModelForCausalLM on a run of a plain HF base."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runner.data.render import Renderer
from runner.data.templates import NAMED, read_template, resolve_template
from runner.ship.prompt import jinja_string, strip_prelude, template_for_run, with_training_defaults
from tests.tiny_tokenizer import tiny_tokenizer

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

# Quotes, backslashes, Jinja syntax, a newline, non-ASCII and an astral character: all must reach
# the rendering unchanged.
HOSTILE = 'You are "Nova" \\ {{ not_a_var }} {% raw %} — ünïcode 😀\nSecond line.\t%}'
CONVERSATIONS = {
    "user": [{"role": "user", "content": "Who are you?"}],
    "own_system": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Who?"}],
    "multi_turn": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                   {"role": "user", "content": "Your name?"}],
}
FULL = {  # whole conversations, as training rows are rendered
    "user": [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "Nova."}],
    "own_system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who?"},
                   {"role": "assistant", "content": "Nova."}],
}
# Tokenizers' own templates (template.name: tokenizer): SmolLM2's, and the official Llama 3.1,
# Gemma 3 and Qwen2.5 templates as trl ships them.
OWN = {"smollm2": ("own", "smollm2.jinja"), "llama3_1": ("trl", "llama3_1.jinja"),
       "gemma3": ("trl", "gemma3.jinja"), "qwen2_5": ("trl", "qwen2_5.jinja")}
FAMILIES = [*NAMED, *(f"tokenizer:{k}" for k in OWN)]


def _training_template(family: str):
    tok = tiny_tokenizer()
    if family.startswith("tokenizer:"):
        where, name = OWN[family.split(":", 1)[1]]
        tok.chat_template = read_template(where, name)
        return tok, resolve_template({"name": "tokenizer"}, tok)
    return tok, resolve_template({"name": family}, tok)


def _as_training_renders(renderer: Renderer, messages, system, add_generation_prompt):
    """What the data pipeline renders: the default system message first (formats._system_first),
    then the template's adaptations (Renderer.prepare)."""
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    prepared, _, _ = renderer.prepare([dict(m) for m in messages], None)
    return renderer.render(prepared, add_generation_prompt=add_generation_prompt)


class _Plan:
    """The two plan fields template_for_run reads, for a template family without a training run."""

    def __init__(self, name, system_prompt, enable_thinking=None):
        from types import SimpleNamespace

        self.data = SimpleNamespace(stage="sft", template=SimpleNamespace(
            name=name, system_prompt=system_prompt, enable_thinking=enable_thinking))


@pytest.mark.parametrize("system", [HOSTILE, None], ids=["system_prompt", "no_system_prompt"])
@pytest.mark.parametrize("family", FAMILIES)
def test_saved_template_renders_what_training_rendered(family, system, tmp_path):
    from transformers import AutoTokenizer

    tok, template = _training_template(family)
    tok.chat_template = template.source
    renderer = Renderer.for_tokenizer(template, tok)
    tok.chat_template = template_for_run(_Plan(template.name, system), tok)
    tok.save_pretrained(tmp_path)
    saved = AutoTokenizer.from_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").is_file()
    for name, messages in CONVERSATIONS.items():
        expected = _as_training_renders(renderer, messages, system, add_generation_prompt=True)
        got = saved.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert got == expected, (family, name)
        if system and name != "own_system":
            assert system.strip() in got  # the training prompt is there, whatever the family
        if name == "own_system":
            assert "Answer in French." in got and (system is None or system.strip() not in got)
    for name, messages in FULL.items():
        expected = _as_training_renders(renderer, messages, system, add_generation_prompt=False)
        assert saved.apply_chat_template(messages, tokenize=False) == expected, (family, name)


@pytest.mark.parametrize("family", ["chatml", "llama3", "tokenizer:smollm2"])
def test_without_the_prelude_the_training_template_prompts_differently(family):
    """The control: the bare training template misses the system prompt a user conversation
    trained with, which is what the prelude is for."""
    tok, template = _training_template(family)
    renderer = Renderer.for_tokenizer(template, tok)
    messages = CONVERSATIONS["user"]
    assert renderer.render(messages, add_generation_prompt=True) != _as_training_renders(
        renderer, messages, HOSTILE, add_generation_prompt=True)


@pytest.mark.parametrize("family", ["mistral", "gemma"])
def test_templates_without_a_system_role_fold_the_prompt_into_the_first_user_turn(family):
    tok, template = _training_template(family)
    shipped = with_training_defaults(template.source, system_prompt="Be Nova.", system_role=False)
    tok.chat_template = shipped
    text = tok.apply_chat_template(CONVERSATIONS["user"], tokenize=False, add_generation_prompt=True)
    assert "Be Nova.\n\nWho are you?" in text
    text = tok.apply_chat_template(CONVERSATIONS["own_system"], tokenize=False, add_generation_prompt=True)
    assert "Answer in French.\n\nWho?" in text and "Be Nova." not in text


def test_the_pipeline_tokenizes_rows_as_the_saved_template_does(tmp_path):
    """End to end through runner's data pipeline: the token ids training saw for each row equal
    the saved tokenizer's apply_chat_template of the same conversation."""
    import yaml
    from transformers import AutoTokenizer

    from runner.data.build import build_datasets
    from runner.data.tokenizer import load_tokenizer
    from runner.plan.resolve import make_plan
    from tests.tiny_tokenizer import save_tiny_tokenizer

    specials = {"chatml": (), "mistral": ("[INST]", "[/INST]"), "gemma": ("<start_of_turn>", "<end_of_turn>"),
                "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")}
    rows = [{"messages": FULL["user"]}, {"messages": FULL["own_system"]}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for family, extra in specials.items():
        model_dir = save_tiny_tokenizer(tmp_path / f"tok-{family}", extra)
        cfg = {"model": {"path": str(model_dir)}, "datasets": [{"path": str(tmp_path / "rows.jsonl"), "format": "openai"}],
               "template": {"name": family, "system_prompt": HOSTILE, "train_on": "all"},
               "sequence": {"max_length": 512, "packing": False}, "data": {"cache_dir": str(tmp_path / "cache")}}
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        plan = make_plan(tmp_path / "cfg.yaml")
        tok = load_tokenizer(plan)
        trained = sorted(tuple(ids) for ids in build_datasets(plan, tok, progress=False).train["input_ids"])
        tok.chat_template = template_for_run(plan, tok)
        tok.save_pretrained(tmp_path / family)
        saved = AutoTokenizer.from_pretrained(tmp_path / family)
        shipped = sorted(tuple(saved.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
                         for r in rows)
        assert shipped == trained, family


def test_thinking_default_is_the_runs_and_a_caller_may_override_it():
    tok, template = _training_template("qwen3")
    tok.chat_template = template.source
    tok.chat_template = template_for_run(_Plan("qwen3", None, enable_thinking=False), tok)
    plain = Renderer(template.source, {"eos_token": tok.eos_token})
    messages = CONVERSATIONS["user"]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        plain.compiled.render(messages=messages, add_generation_prompt=True, enable_thinking=False)
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True) == \
        plain.compiled.render(messages=messages, add_generation_prompt=True, enable_thinking=True)


def test_the_prelude_is_replaced_not_stacked():
    tok, template = _training_template("chatml")
    tok.chat_template = template.source
    once = template_for_run(_Plan("chatml", "First."), tok)
    tok.chat_template = once
    assert template_for_run(_Plan("chatml", "First."), tok) == once
    again = template_for_run(_Plan("chatml", "Second."), tok)
    assert "Second." in again and "First." not in again and strip_prelude(again) == template.source
    assert template_for_run(_Plan("chatml", None), tok) == template.source  # nothing to add


@pytest.mark.parametrize("text", [HOSTILE, "", "\\n is not a newline", "\x01\x7f\u2028", '"' * 3, "%}{{'x'}}{%"])
def test_jinja_string_renders_back_exactly(text):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    assert ImmutableSandboxedEnvironment().from_string("{{ " + jinja_string(text) + " }}").render() == text


# ---- the real run directory, the merged folder, AutoPeftModel ---------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from runner.plan.resolve import make_plan
    from runner.train.command import run
    from tests.tiny_model import save_tiny_model, write_config

    tmp = tmp_path_factory.mktemp("ship-prompt")
    model_dir = save_tiny_model(tmp / "model")
    cfg = write_config(tmp, model_dir, training={"max_steps": 3}, dataset={"num_samples": 4},
                       extra={"template": {"name": "tokenizer", "system_prompt": HOSTILE}})
    return run(make_plan(cfg))


def test_run_directory_template_prompts_as_runner_generate_does(tiny_run):
    from transformers import AutoTokenizer

    from runner.serve.generate import default_system_prompt, prompt_inputs
    from runner.ship.merge import load_run_plan

    plan = load_run_plan(tiny_run)
    tokenizer = AutoTokenizer.from_pretrained(tiny_run)
    for messages in CONVERSATIONS.values():
        generate_ids = prompt_inputs(tokenizer, messages, system=default_system_prompt(plan), plan=plan)["input_ids"][0]
        plain = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert plain == generate_ids.tolist()
    text = tokenizer.apply_chat_template(CONVERSATIONS["user"], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n" + HOSTILE + "<|im_end|>\n")
    card = (tiny_run / "README.md").read_text()
    assert "## System prompt" in card and "> Second line." in card and "AutoPeftModelForCausalLM" in card


def test_autopeft_loads_a_run_of_a_plain_hf_base(tiny_run):
    from peft import AutoPeftModelForCausalLM

    from runner.serve.generate import load_for_generation
    from tests.tiny_model import logits_of, probe_ids

    auto = AutoPeftModelForCausalLM.from_pretrained(tiny_run).eval()
    ours, _, _ = load_for_generation(tiny_run)
    with torch.inference_mode():
        torch.testing.assert_close(logits_of(auto, probe_ids()), logits_of(ours, probe_ids()), rtol=1e-4, atol=1e-4)


def test_merged_folder_has_its_own_card_and_the_training_template(tiny_run, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoTokenizer

    from runner.cli import main

    out = tmp_path / "merged"
    assert main(["merge", str(tiny_run), "--out", str(out)]) == 0
    plan = json.loads((tiny_run / "plan.json").read_text())
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.to_dict()["runner"]["plan_hash"] == plan["hashes"]["plan"]
    assert "merged" in card.data.tags and "runner" in card.data.tags
    assert f"run `{plan['name']}`" in card.text and "> Second line." in card.text
    assert "AutoModelForCausalLM.from_pretrained(" in card.text
    for weights in out.glob("*.safetensors"):
        from runner.train.card import file_sha256

        assert file_sha256(weights) in card.text
    assert str(tiny_run) not in card.content and str(Path.home()) + "/" not in card.content
    merged_tok = AutoTokenizer.from_pretrained(out)
    run_tok = AutoTokenizer.from_pretrained(tiny_run)
    for messages in CONVERSATIONS.values():
        assert merged_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
            run_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ---- the quickstart run (GGUF base): the card's lines load it ---------------------------------------------

def _code_block(card: str) -> str:
    return card.split("```python\n", 1)[1].split("```", 1)[0]


def _run_code(code: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


ASK = """
import torch
torch.set_num_threads(2)
messages = [{"role": "user", "content": "What is your name?"}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
print(tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))
"""


def test_quickstart_card_lines_load_the_gguf_based_adapter_and_it_answers_as_trained(quickstart_copy):
    card = (quickstart_copy / "README.md").read_text()
    code = _code_block(card)
    assert "gguf_file='SmolLM2-135M-Instruct.Q4_1.gguf'" in code and "PeftModel.from_pretrained(base, run)" in code
    code = code.replace("run = 'quickstart'", f"run = {quickstart_copy.name!r}")  # the folder, from its parent
    assert "Nova" in _run_code(code + ASK, quickstart_copy.parent)


def test_quickstart_merged_card_lines_load_the_merged_model(quickstart_copy):
    from huggingface_hub import ModelCard

    from runner.cli import main

    assert main(["merge", str(quickstart_copy)]) == 0
    merged = quickstart_copy / "merged"
    card = ModelCard.load(merged / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    assert "You are a helpful assistant." in card.text
    assert (merged / "chat_template.jinja").read_text().count("You are a helpful assistant.") == 1
    assert "Nova" in _run_code(_code_block(card.content) .split('messages = ')[0] + ASK, quickstart_copy.parent)
