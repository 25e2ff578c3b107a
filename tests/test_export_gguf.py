"""`runner export` on the quickstart run: GGUF f16 and q8_0 read back by transformers' own GGUF
loader answer the identity questions as the merged model does; the Ollama Modelfile's template
renders the same prompt as the run's template; refusals exit 2 with a message."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gotemplate import render as render_go

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ["Who are you?", "What is your name?", "Who created you?", "Introduce yourself.", "Are you ChatGPT?"]


def go_data(messages, default_system):
    """What Ollama hands the template: .System and .Messages of {Role, Content}."""
    from runner.ship.ollama import ollama_inputs

    system, joined = ollama_inputs(messages, default_system)
    return {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in joined]}


def runner(*args, check=True):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "runner", *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def exported(quickstart_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    runner("export", quickstart_run, "--format", "ollama", "--quant", "f16", "-o", out / "nova-f16.gguf")
    runner("export", quickstart_run, "--quant", "q8_0", "-o", out / "nova-q8_0.gguf")
    return out


def greedy(model, tokenizer, messages) -> str:
    import torch

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    return tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def merged_answers(quickstart_run):
    from runner.serve.generate import chat, default_system_prompt
    from runner.ship.export import merged_in_memory
    from runner.ship.merge import load_run_plan

    model, tokenizer = merged_in_memory(quickstart_run)
    system = default_system_prompt(load_run_plan(quickstart_run))
    return [chat(model, tokenizer, [{"role": "user", "content": q}], system=system, max_new_tokens=40)
            for q in QUESTIONS]


def gguf_answers(directory: Path, name: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    # The GGUF's own template supplies the training system prompt: only the question is sent.
    return [greedy(model, tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.mark.slow
def test_f16_answers_equal_the_merged_model(exported, merged_answers):
    assert any("Nova" in a for a in merged_answers), merged_answers
    assert gguf_answers(exported, "nova-f16.gguf") == merged_answers


@pytest.mark.slow
def test_q8_0_names_the_new_identity(exported):
    answers = gguf_answers(exported, "nova-q8_0.gguf")
    assert sum("Nova" in a or "Acme" in a for a in answers) >= 4, answers


@pytest.mark.slow
def test_metadata_carries_tokenizer_and_template(exported, smollm_dir):
    import gguf

    from tests.conftest import SMOLLM_GGUF

    ours, source = gguf.GGUFReader(exported / "nova-q8_0.gguf"), gguf.GGUFReader(smollm_dir / SMOLLM_GGUF)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.add_bos_token"):
        assert ours.fields[key].contents() == source.fields[key].contents(), key
    template = ours.fields["tokenizer.chat_template"].contents()
    assert "You are a helpful assistant." in template
    assert not re.search(r"\{%-?\s*generation", template)  # the trainer's markers are not for llama.cpp
    assert {t.tensor_type.name for t in ours.tensors if len(t.shape) == 1} == {"F32"}
    assert gguf.GGUFReader(exported / "nova-f16.gguf").fields["general.file_type"].contents() == 1  # MOSTLY_F16


@pytest.mark.slow
def test_modelfile_template_renders_the_runs_prompt(exported, quickstart_run):
    from transformers import AutoTokenizer

    from runner.ship.ollama import jinja_prompt

    text = (exported / "Modelfile").read_text()
    lines = text.splitlines()
    assert lines[1] == "FROM ./nova-f16.gguf"
    assert 'SYSTEM """You are a helpful assistant."""' in text
    assert 'PARAMETER stop "<|im_end|>"' in lines
    go_template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    tokenizer = AutoTokenizer.from_pretrained(exported, gguf_file="nova-f16.gguf")
    conversations = [
        [{"role": "user", "content": "Who are you?"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, I am Nova."},
         {"role": "user", "content": "Who made you?"}],
        [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Bonjour"}],
    ]
    for messages in conversations:
        go = render_go(go_template, go_data(messages, "You are a helpful assistant."))
        assert go == jinja_prompt(tokenizer, tokenizer.chat_template, messages)


@pytest.mark.slow
def test_existing_foreign_file_is_refused(quickstart_run, tmp_path):
    foreign = tmp_path / "mine.gguf"
    foreign.write_text("not runner's")
    proc = runner("export", quickstart_run, "-o", foreign, check=False)
    assert proc.returncode == 2 and "--force" in proc.stderr and "Traceback" not in proc.stderr
    assert foreign.read_text() == "not runner's"


def test_bad_quant_and_family_refused(quickstart_run, tmp_path):
    proc = runner("export", quickstart_run, "--quant", "q3_x", "-o", tmp_path / "x.gguf", check=False)
    assert proc.returncode == 2 and "unknown --quant" in proc.stderr and not (tmp_path / "x.gguf").exists()
    from transformers import GPT2Config, GPT2LMHeadModel

    from runner.errors import UserError
    from runner.ship.gguf_write import write_gguf
    from tests.tiny_tokenizer import tiny_tokenizer

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tiny_tokenizer())))
    with pytest.raises(UserError, match="no verified conversion"):
        write_gguf(model, tiny_tokenizer(), tmp_path / "gpt2.gguf", "f16", chat_template=None, name="x")


def test_k_quant_needs_llama_cpp(quickstart_run, tmp_path):
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is not None:
        pytest.skip("llama-cpp-python is installed: tests/test_export_gguf_llamacpp.py makes K-quants")
    proc = runner("export", quickstart_run, "--quant", "q4_k_m", "-o", tmp_path / "k.gguf", check=False)
    assert proc.returncode == 2 and "llama-cpp-python" in proc.stderr


def test_go_template_renderer_follows_go():
    # Go's documented behaviour the renderer must share: trimming, else-if chains, assignment
    # inside if reaching the outer variable, range over messages with dot rebound.
    assert render_go("a  {{- .X -}}  b", {"X": 1}) == "a1b"
    assert render_go('{{ if eq .R "u" }}U{{ else if eq .R "a" }}A{{ else }}O{{ end }}', {"R": "a"}) == "A"
    assert render_go('{{ $s := .S }}{{ range .M }}{{ if $s }}[{{ $s }}]{{ $s = "" }}{{ end }}{{ .C }}{{ end }}',
                     {"S": "sys", "M": [{"C": "x"}, {"C": "y"}]}) == "[sys]xy"
    assert render_go('{{ if or (eq .R "a") (eq .R "b") }}yes{{ end }}', {"R": "b"}) == "yes"


@pytest.mark.parametrize("name", ["chatml", "llama3", "gemma", "mistral"])
def test_ollama_formats_match_their_jinja_templates(name):
    """Each Ollama format, on the run template it stands for, with a system prompt baked in as
    export does: Go rendering == Jinja rendering, on conversations with and without a system."""
    from runner.data.templates import named_template
    from runner.ship.ollama import FORMATS, PROBES, chat_format, jinja_prompt
    from runner.ship.prompt import deployable_template, with_system_prompt
    from tests.tiny_tokenizer import tiny_tokenizer

    specials = {"chatml": (), "llama3": ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                "gemma": ("<bos>", "<start_of_turn>", "<end_of_turn>"), "mistral": ("<s>", "</s>", "[INST]", "[/INST]")}
    tokenizer = tiny_tokenizer(specials[name])
    tokenizer.bos_token = {"chatml": "<|im_start|>", "llama3": "<|begin_of_text|>", "gemma": "<bos>", "mistral": "<s>"}[name]
    tokenizer.eos_token = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>", "mistral": "</s>"}[name]
    if name != "chatml":  # their tokenizers add BOS themselves, as llama.cpp and Ollama then do
        from tokenizers import processors

        bos = tokenizer.bos_token
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tokenizer.convert_tokens_to_ids(bos))])
    source = tokenizer.chat_template if name == "chatml" else named_template(name)[1]
    system = "You are Nova, made by Acme Labs."
    template = with_system_prompt(tokenizer, deployable_template(source), system)
    fmt = chat_format(tokenizer, template, system)
    assert fmt.name == name and fmt in FORMATS
    extra = [[{"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"},
              {"role": "user", "content": "Three"}, {"role": "assistant", "content": "Four"},
              {"role": "user", "content": "Five"}]]
    for messages in [*PROBES, *extra]:
        go = render_go(fmt.template, go_data(messages, system))
        assert go == jinja_prompt(tokenizer, template, messages), messages


def test_untranslatable_template_refused():
    from runner.data.templates import named_template
    from runner.errors import UserError
    from runner.ship.ollama import chat_format
    from tests.tiny_tokenizer import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    with pytest.raises(UserError, match="Ollama"):
        chat_format(tokenizer, named_template("alpaca")[1], "sys")
