"""An Ollama Modelfile for an exported GGUF: FROM the file, TEMPLATE in Ollama's Go template
syntax for the run's chat format, SYSTEM with the training system prompt, PARAMETER stop for the
end-of-turn tokens.

Ollama renders a conversation with its own Go template, not the Jinja one in the GGUF, so the
two must agree. Each chat format below has its Go template and the same text written in Python;
the run's (Jinja) template is rendered on probe conversations and the format whose text equals it
is chosen. A template none of them renders identically is refused: a Modelfile that prompts the
model differently than it was trained would be worse than none.

Ollama hands the template `.System` (the system messages, or the Modelfile's SYSTEM) and
`.Messages` (all messages, consecutive ones of a role joined by a blank line); the templates
render the system text from `.System` and skip system messages in the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from runner.errors import UserError


@dataclass(frozen=True)
class ChatFormat:
    name: str
    template: str                      # Ollama's Go template
    stops: tuple[str, ...]
    render: Callable[[str, list], str]  # the same text in Python: (system, messages) -> prompt


def _turns(messages):
    return [m for m in messages if m["role"] in ("user", "assistant")]


def _chatml(system, messages):
    out = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    for m in _turns(messages):
        out += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    return out + "<|im_start|>assistant\n"


def _llama3(system, messages):
    head = "<|start_header_id|>{}<|end_header_id|>\n\n"
    out = head.format("system") + system + "<|eot_id|>" if system else ""
    for m in _turns(messages):
        out += head.format(m["role"]) + m["content"] + "<|eot_id|>"
    return out + head.format("assistant")


def _folded(messages, system):
    """The system text joined to the first user turn, as templates without a system role train."""
    turns = _turns(messages)
    if system and turns and turns[0]["role"] == "user":
        turns[0] = {"role": "user", "content": system + "\n\n" + turns[0]["content"]}
    return turns


def _gemma(system, messages):
    out = ""
    for m in _folded(messages, system):
        role = "model" if m["role"] == "assistant" else "user"
        out += f"<start_of_turn>{role}\n{m['content']}<end_of_turn>\n"
    return out + "<start_of_turn>model\n"


def _mistral(system, messages):
    out = ""
    for m in _folded(messages, system):
        out += f"[INST] {m['content']} [/INST]" if m["role"] == "user" else m["content"] + "</s>"
    return out


# The system text goes into the first user turn; `$system = ""` after using it (Go 1.11+ assigns
# the outer variable from inside if/range).
_FOLD = '{{ if $system }}{{ $system }}\n\n{{ $system = "" }}{{ end }}'

FORMATS = (
    ChatFormat("chatml",
               '{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
               '{{- range .Messages }}{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
               '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n'
               '{{ end }}{{ end }}<|im_start|>assistant\n',
               ("<|im_end|>", "<|im_start|>"), _chatml),
    ChatFormat("llama3",
               '{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}'
               '{{- range .Messages }}{{ if or (eq .Role "user") (eq .Role "assistant") }}'
               '<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}{{ end }}'
               '<|start_header_id|>assistant<|end_header_id|>\n\n',
               ("<|eot_id|>", "<|start_header_id|>"), _llama3),
    ChatFormat("gemma",
               '{{- $system := .System }}{{- range .Messages }}{{ if eq .Role "user" }}<start_of_turn>user\n'
               + _FOLD + '{{ .Content }}<end_of_turn>\n'
               '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n'
               '{{ end }}{{ end }}<start_of_turn>model\n',
               ("<end_of_turn>",), _gemma),
    ChatFormat("mistral",
               '{{- $system := .System }}{{- range .Messages }}{{ if eq .Role "user" }}[INST] '
               + _FOLD + '{{ .Content }} [/INST]'
               '{{ else if eq .Role "assistant" }}{{ .Content }}</s>{{ end }}{{ end }}',
               ("</s>", "[INST]"), _mistral),
)

PROBE_SYSTEM = "Probe system prompt."
PROBES = (
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hi there."}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Name a color."}],
    [{"role": "system", "content": PROBE_SYSTEM}, {"role": "user", "content": "Who are you?"}],
)


def jinja_prompt(tokenizer, template: str, messages: list) -> str:
    """The run's template as llama.cpp renders it: BOS text dropped when the tokenizer adds BOS
    itself (Ollama's runner adds it the same way)."""
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]:
        text = text[len(bos):]
    return text


def ollama_inputs(messages: list, default_system: str | None) -> tuple[str, list]:
    """(.System, .Messages) as Ollama passes them: the Modelfile's SYSTEM when the request has
    none, consecutive messages of one role joined."""
    if default_system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": default_system}, *messages]
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    joined = []
    for m in messages:
        if joined and joined[-1]["role"] == m["role"]:
            joined[-1] = {"role": m["role"], "content": joined[-1]["content"] + "\n\n" + m["content"]}
        else:
            joined.append(dict(m))
    return system, joined


def chat_format(tokenizer, template: str, system: str | None) -> ChatFormat:
    """The format whose text equals the run's template on every probe conversation."""
    for fmt in FORMATS:
        try:
            if all(jinja_prompt(tokenizer, template, probe) == fmt.render(*ollama_inputs(probe, system))
                   for probe in PROBES):
                return fmt
        except Exception:  # noqa: BLE001 - the template rejects a probe: not this format
            continue
    raise UserError("the run's chat template is none runner can translate to Ollama's template language "
                    "faithfully (known: " + ", ".join(f.name for f in FORMATS) + ")", where="template.name",
                    hint="use --format gguf: llama.cpp reads the Jinja template from the GGUF file itself")


def modelfile(tokenizer, *, template: str, gguf_name: str, system: str | None) -> str:
    """The Modelfile text; `template` is the Jinja template the GGUF file carries."""
    from runner.ship.export import MODELFILE_HEAD

    fmt = chat_format(tokenizer, template, system)
    for text in (fmt.template, system or ""):
        if '"""' in text:
            raise UserError('the system prompt contains """, which a Modelfile cannot quote', where="template.system_prompt")
    lines = [f"{MODELFILE_HEAD} ({fmt.name} chat format)", f"FROM ./{gguf_name}", "",
             f'TEMPLATE """{fmt.template}"""', ""]
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f'PARAMETER stop "{stop}"' for stop in fmt.stops]
    return "\n".join(lines) + "\n"
