"""The chat template a shipped model carries: the run's template, rendering the same text it
trained on, with the training system prompt as its default so that llama.cpp and Ollama prompt
the model as `runner generate` does.

`{% generation %}` markers only tell the trainer which characters carry loss; inference engines
(llama.cpp's Jinja) do not know the tag, and the text is the same without it. A template that
rejects a system message gets the prompt folded into the first user turn, as training did.
"""
from __future__ import annotations

import json
import re

_GENERATION = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")
_PROBE = "system-probe-7f3a"


def deployable_template(template: str) -> str:
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
    """`template` with `system` as the system message when the conversation brings none."""
    if not system:
        return template
    literal = json.dumps(system, ensure_ascii=False)
    if renders_system(tokenizer, template):
        head = ("{%- if not messages or messages[0]['role'] != 'system' %}"
                "{%- set messages = [{'role': 'system', 'content': " + literal + "}] + messages %}{%- endif %}")
    else:
        head = ("{%- set _system = " + literal + " %}"
                "{%- if messages and messages[0]['role'] == 'system' %}"
                "{%- set _system = messages[0]['content'] %}{%- set messages = messages[1:] %}{%- endif %}"
                "{%- if messages and messages[0]['role'] == 'user' %}"
                "{%- set messages = [{'role': 'user', 'content': _system + '\\n\\n' + messages[0]['content']}]"
                " + messages[1:] %}{%- endif %}")
    return head + template
