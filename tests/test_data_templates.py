"""Template parity with the official templates (trl's shipped ones, SmolLM2's own, Meta's Llama-2
and Mistral's), and the template/model mismatch checks `runner lint` calls."""

from __future__ import annotations


import pytest

from runner.data.templates import NAMED, named_template, read_template, resolve_template
from test_data_support import plan_for, smol_tokenizer, tiny_model_dir

BOS, EOS = "<s>", "</s>"

# meta-llama/Llama-2-7b-chat-hf and mistralai/Mixtral-8x7B-Instruct-v0.1, as shipped.
LLAMA2_OFFICIAL = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
MISTRAL_OFFICIAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

U1, A1, U2, A2 = "What is the capital of France?", "Paris.", "And of Italy?", "Rome, of course."
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
SUITE = {
    "single": [{"role": "user", "content": U1}, {"role": "assistant", "content": A1}],
    "system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": U1},
               {"role": "assistant", "content": A1}],
    "multi": [{"role": "user", "content": U1}, {"role": "assistant", "content": A1},
              {"role": "user", "content": U2}, {"role": "assistant", "content": A2}],
    "system_multi": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": U1},
                     {"role": "assistant", "content": A1}, {"role": "user", "content": U2},
                     {"role": "assistant", "content": A2}],
    "tools": [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
              {"role": "tool", "content": '{"temp": 21}'}, {"role": "assistant", "content": "It is 21 degrees."}],
}


def render(source, messages, tools=None, add_generation_prompt=False, **kwargs):
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], tools=tools, chat_template=source, bos_token=BOS,
                                        eos_token=EOS, add_generation_prompt=add_generation_prompt, **kwargs)
    return rendered[0]


def outcome(source, messages, tools=None, **kwargs):
    try:
        return render(source, messages, tools, **kwargs)
    except Exception as e:  # both must refuse the same conversations
        return f"refused: {type(e).__name__}"


TRL_FAMILIES = [n for n, (where, _, _) in NAMED.items() if where == "trl"]


@pytest.mark.parametrize("name", TRL_FAMILIES)
@pytest.mark.parametrize("case", list(SUITE))
def test_trl_family_training_template_renders_official_text(name, case):
    official, training, _ = named_template(name)
    messages, tools = SUITE[case], TOOLS if case == "tools" else None
    for gen_prompt in (False, True):
        conv = messages if not gen_prompt else messages[:-1]
        if name == "deepseek" and case == "tools":
            # The official DeepSeek-V3 template concatenates arguments as a string (it crashes on a dict);
            # the training variant serialises the dict itself: the text must come out the same.
            as_string = [dict(m, tool_calls=[{**CALL, "function": {**CALL["function"], "arguments": '{"city": "Paris"}'}}])
                         if m.get("tool_calls") else m for m in conv]
            assert render(training, conv, tools, gen_prompt) == render(official, as_string, tools, gen_prompt)
            continue
        expected = outcome(official, conv, tools, add_generation_prompt=gen_prompt)
        got = outcome(training, conv, tools, add_generation_prompt=gen_prompt)
        if name == "qwen3" and got != expected and not got.startswith("refused"):
            # Documented exception: the training variant keeps an (empty) <think> block on earlier
            # assistant turns, which the official one drops once a later user turn follows.
            got = _drop_earlier_think_blocks(got)
        assert got == expected


def _drop_earlier_think_blocks(text):
    turns = text.split("<|im_start|>assistant\n")
    last_user = max(i for i, t in enumerate(turns) if "<|im_start|>user" in t)
    return "<|im_start|>assistant\n".join(t.replace("<think>\n\n</think>\n\n", "", 1) if 0 < i <= last_user else t
                                          for i, t in enumerate(turns))


@pytest.mark.parametrize("enable_thinking", [True, False])
def test_qwen3_thinking_switch_matches_official(enable_thinking):
    official, training, _ = named_template("qwen3")
    conv = SUITE["single"][:1]
    got = render(training, conv, add_generation_prompt=True, enable_thinking=enable_thinking)
    assert got == render(official, conv, add_generation_prompt=True, enable_thinking=enable_thinking)
    assert got.endswith("<think>\n\n</think>\n\n") == (not enable_thinking)
    thought = [{"role": "user", "content": U1},
               {"role": "assistant", "content": "<think>\nRecall geography.\n</think>\n\nParis."}]
    assert render(training, thought) == render(official, thought)
    assert "<think>\nRecall geography.\n</think>\n\nParis.<|im_end|>" in render(training, thought)


@pytest.mark.parametrize("case", list(SUITE))
def test_smollm2_training_variant_and_chatml_match_smollm2_own(case):
    own = smol_tokenizer().chat_template
    assert own == read_template("own", "smollm2.jinja")
    messages = SUITE[case]
    assert render(read_template("own", "smollm2_training.jinja"), messages) == render(own, messages)
    assert render(read_template("own", "smollm2_training.jinja"), messages[:-1], add_generation_prompt=True) == \
        render(own, messages[:-1], add_generation_prompt=True)
    if messages[0]["role"] == "system":  # chatml has no default system prompt; otherwise the same format
        assert render(read_template("own", "chatml.jinja"), messages) == render(own, messages)


@pytest.mark.parametrize("name,official", [("llama2", LLAMA2_OFFICIAL), ("mistral", MISTRAL_OFFICIAL)])
@pytest.mark.parametrize("case", list(SUITE))
def test_own_templates_match_vendor_templates(name, official, case):
    ours = read_template("own", NAMED[name][2])
    assert outcome(ours, SUITE[case]) == outcome(official, SUITE[case])


def test_vicuna_and_alpaca_render_their_documented_formats():
    vicuna = render(read_template("own", "vicuna.jinja"), SUITE["multi"])
    assert vicuna == ("<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                      "helpful, detailed, and polite answers to the user's questions. USER: " + U1 + " ASSISTANT: "
                      + A1 + "</s>USER: " + U2 + " ASSISTANT: " + A2 + "</s>")
    alpaca = render(read_template("own", "alpaca.jinja"), SUITE["system_multi"])
    assert alpaca == ("<s>Be brief.\n\n### Instruction:\n" + U1 + "\n\n### Response:\n" + A1 + "</s>\n\n"
                      "### Instruction:\n" + U2 + "\n\n### Response:\n" + A2 + "</s>")


def test_every_named_template_resolves_and_own_ones_have_generation_markers():
    from trl.chat_template_utils import has_generation_markers

    for name in NAMED:
        template = resolve_template({"name": name})
        assert has_generation_markers(template.source), name


# ---- check_template --------------------------------------------------------------------------------
def _check(tmp_path, template, tokenizer=None, model=None, **extra):
    from runner.data import check_template

    plan = plan_for(tmp_path, [{"path": str(tmp_path / "d.json"), "format": "alpaca"}], template=template,
                    model=model, **extra)
    return check_template(plan, tokenizer or smol_tokenizer())


@pytest.fixture
def data_file(tmp_path):
    (tmp_path / "d.json").write_text('[{"instruction": "a", "output": "b"}]')


def test_check_template_clean_for_smollm2(tmp_path, data_file):
    assert _check(tmp_path, {"name": "tokenizer"}) == []
    assert _check(tmp_path, {"name": "chatml"}) == []


def test_check_template_reports_missing_special_tokens(tmp_path, data_file):
    found = _check(tmp_path, {"name": "llama3"})
    errors = [f for f in found if f.startswith("error:")]
    assert errors and "<|eot_id|>" in errors[0] and "<|start_header_id|>" in errors[0]


def test_check_template_reports_untrained_stop_token(tmp_path, data_file):
    (tmp_path / "plain.jinja").write_text("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                                          "{% if add_generation_prompt %}assistant:{% endif %}")
    found = _check(tmp_path, {"name": "jinja", "jinja": str(tmp_path / "plain.jinja")})
    assert any(f.startswith("error:") and "end-of-turn" in f for f in found)


def test_check_template_reports_non_prefix_preserving_user_template(tmp_path, data_file):
    (tmp_path / "qwen3_official.jinja").write_text(named_template("qwen3")[0])
    found = _check(tmp_path, {"name": "jinja", "jinja": str(tmp_path / "qwen3_official.jinja")})
    assert any(f.startswith("error:") and "prefix-preserving" in f for f in found)


def test_check_template_says_qwen3_uses_training_variant(tmp_path, data_file):
    from tiny_tokenizer import tiny_tokenizer

    tok = tiny_tokenizer(("<|im_start|>", "<|im_end|>"))
    found = _check(tmp_path, {"name": "qwen3"}, tokenizer=tok, model={"path": str(tiny_model_dir(tmp_path))})
    assert not [f for f in found if f.startswith("error:")]
    assert any(f.startswith("warning:") and "not prefix-preserving" in f and "qwen3_training" in f for f in found)


def test_check_template_warns_when_system_prompt_is_folded(tmp_path, data_file):
    from tiny_tokenizer import tiny_tokenizer

    tok = tiny_tokenizer(("<start_of_turn>", "<end_of_turn>"))
    found = _check(tmp_path, {"name": "gemma", "system_prompt": "Be kind."}, tokenizer=tok,
                   model={"path": str(tiny_model_dir(tmp_path))})
    assert any(f.startswith("warning:") and "folded" in f for f in found)
    assert not [f for f in found if f.startswith("error:")]
