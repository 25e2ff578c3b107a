"""The chat template a run ships with: the template it trained with, behind a short Jinja prelude
that sets the defaults training used, so that whatever renders the saved template (transformers'
`apply_chat_template`, vLLM, a GGUF's metadata) prompts the model as `runner generate` does.

- A conversation without a system message gets the run's `template.system_prompt`; one with its
  own system message keeps it. Without a configured prompt the template's own default (SmolLM2's,
  Qwen2.5's) is what training used, and the template is left as it is.
- A template without a system role (Mistral v0.1, Gemma) had the system message folded into the
  first user turn by the data pipeline (runner.data.render.Renderer.prepare); the prelude folds
  the same way.
- `template.enable_thinking`, when set, becomes the default of the `enable_thinking` variable.

The prelude sits between two marker comments; `strip_prelude` removes it, so writing it again (a
merge of a run saved earlier) replaces it instead of stacking a second one.
"""
from __future__ import annotations

import re

BEGIN = "{#- runner: defaults of training (system prompt); a conversation's own system message wins -#}\n"
END = "{#- runner: end of training defaults -#}\n"
_PRELUDE = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)

_INSERT = """\
{%- if not messages or messages[0]['role'] != 'system' -%}
    {%- set messages = [{'role': 'system', 'content': runner_system_prompt}] + messages -%}
{%- endif -%}
"""
# As Renderer.prepare folds a system message the template cannot render: into the first user turn,
# separated by a blank line; left in place (and refused by the template) when no user turn follows.
_FOLD = """\
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set runner_system_prompt = messages[0]['content'] -%}
    {%- set runner_rest = messages[1:] -%}
{%- else -%}
    {%- set runner_rest = messages -%}
{%- endif -%}
{%- if runner_system_prompt is not none and runner_rest and runner_rest[0]['role'] == 'user' -%}
    {%- set messages = [{'role': 'user', 'content': runner_system_prompt + '\\n\\n' + runner_rest[0]['content']}] + runner_rest[1:] -%}
{%- endif -%}
"""


def jinja_string(text: str) -> str:
    """`text` as a double-quoted Jinja string literal. Jinja unescapes literals like Python
    (backslash escapes, then unicode-escape), so backslash, quote and control characters are
    escaped; everything else stays readable."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def strip_prelude(source: str) -> str:
    return _PRELUDE.sub("", source, count=1)


def with_training_defaults(source: str, *, system_prompt: str | None, system_role: bool = True,
                           enable_thinking: bool | None = None) -> str:
    """`source` (any prelude of ours removed) behind a prelude that applies the training defaults;
    `system_role`: whether the template renders a system message (else it is folded)."""
    source = strip_prelude(source)
    body = ""
    if enable_thinking is not None:
        body += ("{%- if enable_thinking is not defined -%}\n"
                 f"    {{%- set enable_thinking = {'true' if enable_thinking else 'false'} -%}}\n"
                 "{%- endif -%}\n")
    default = jinja_string(system_prompt) if system_prompt else "none"
    if not system_role:  # folded, as in training, whether the default or the conversation's own
        body += f"{{%- set runner_system_prompt = {default} -%}}\n" + _FOLD
    elif system_prompt:
        body += f"{{%- set runner_system_prompt = {default} -%}}\n" + _INSERT
    return BEGIN + body + END + source if body else source


def template_for_run(plan, tokenizer, source: str | None = None) -> str | None:
    """The template to save beside a run's weights: `source` (default: the tokenizer's, which is
    the training template once runner.data.tokenizer has attached it) with the run's defaults.
    None for a run without a chat template (continued pretraining)."""
    from runner.data.render import Renderer

    source = source if source is not None else getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):
        source = source.get("default")
    if not source or plan.data.stage == "pt":
        return source
    bare = strip_prelude(source)
    template = plan.data.template
    tokens = {k: getattr(tokenizer, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    system_role = Renderer(bare, tokens, name=template.name).caps["system"]
    return with_training_defaults(bare, system_prompt=template.system_prompt, system_role=system_role,
                                  enable_thinking=template.enable_thinking)


def save_tokenizer(tokenizer, plan, directory) -> None:
    """tokenizer.save_pretrained with the shipped template (chat_template.jinja); the tokenizer
    object keeps its training template."""
    original = tokenizer.chat_template
    try:
        if plan is not None:
            tokenizer.chat_template = template_for_run(plan, tokenizer)
        tokenizer.save_pretrained(str(directory))
    finally:
        tokenizer.chat_template = original


_GENERATION = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")
_PROBE = "system-probe-7f3a"


def deployable_template(template: str) -> str:
    """`template` without `{% generation %}` markers: they only tell the trainer which characters
    carry loss; llama.cpp's and Ollama's template engines do not know the tag, and the rendered
    text is the same without it."""
    return _GENERATION.sub("", template)


def renders_system(tokenizer, template: str) -> bool:
    """Whether the template shows a system message (Gemma's and Mistral's reject it)."""
    try:
        text = tokenizer.apply_chat_template([{"role": "system", "content": _PROBE}, {"role": "user", "content": "hi"}],
                                             chat_template=template, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - raise_exception() in the template: no system role
        return False
    return _PROBE in text


def with_system_prompt(tokenizer, template: str, system: str | None) -> str:
    """`template` with `system` as the system message when the conversation brings none (folded
    into the first user turn where the template has no system role)."""
    return with_training_defaults(template, system_prompt=system, system_role=renders_system(tokenizer, template))
