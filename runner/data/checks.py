"""Template/model mismatches that can be detected before training, for `runner lint`.

check_template(plan, tokenizer) -> list of "error: ..." / "warning: ..." strings.
"""

from __future__ import annotations

import re

# Strings shaped like control tokens: <|im_end|>, <｜User｜>, <start_of_turn>, <end_of_turn>.
_TOKEN_LIKE = re.compile(r"<\|[A-Za-z0-9_.:/-]+\|>|<｜[^｜<>]+｜>|<(?:start|end)_of_turn>")

_PROBE = [
    {"role": "user", "content": "probe question one"},
    {"role": "assistant", "content": "<think>\nprobe reasoning\n</think>\n\nprobe answer one"},
    {"role": "user", "content": "probe question two"},
    {"role": "assistant", "content": "probe answer two"},
]


def template_literals(source: str) -> set[str]:
    """Token-like strings the template writes itself (its text and string constants)."""
    import jinja2
    import jinja2.ext

    class Generation(jinja2.ext.Extension):  # parse {% generation %} blocks, which plain jinja lacks
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = jinja2.Environment(extensions=[jinja2.ext.loopcontrols, Generation])
    ast = env.parse(source)
    texts = [n.data for n in ast.find_all(jinja2.nodes.TemplateData)]
    texts += [n.value for n in ast.find_all(jinja2.nodes.Const) if isinstance(n.value, str)]
    return {m for t in texts for m in _TOKEN_LIKE.findall(t)}


def check_template(plan, tokenizer) -> list[str]:
    from runner.data.render import RenderTimeout
    from runner.data.templates import resolve_template
    from runner.errors import UserError

    from runner.plan.sections import to_dict

    data = to_dict(plan.data)
    if data.get("stage") == "pt":
        return []
    try:
        template = resolve_template(data["template"], tokenizer)
    except UserError as e:
        return [f"error: {e.message}"]
    try:
        return _check(data, template, tokenizer)
    except RenderTimeout as e:  # a template that loops for ever on a two-turn conversation
        return [f"error: {e} a two-turn conversation: a loop in it does not end"]


def _check(data, template, tokenizer) -> list[str]:
    from runner.data.render import Renderer, TemplateRenderError
    from runner.errors import UserError

    out = []
    vocab = tokenizer.get_vocab()
    missing = sorted(t for t in template_literals(template.source) if t not in vocab)
    if missing:
        out.append(f"error: template {template.name} writes {', '.join(missing)}, which the tokenizer does not have "
                   "as tokens: they would be split into ordinary pieces and the model would not learn to stop on them "
                   "(pick the template of this model's family, or template.name: tokenizer)")
    renderer = Renderer.for_tokenizer(template, tokenizer)
    if not renderer.caps["system"] and (data["template"].get("system_prompt")
                                        or any(d.get("system") for d in data.get("datasets", []))):
        out.append(f"warning: template {template.name} has no system role; system prompts are folded into the "
                   "first user turn")
    train_on = data["template"].get("train_on", "assistant")
    try:
        text, spans = renderer.spans(_PROBE, None, "assistant")
    except TemplateRenderError as e:
        out.append(f"error: {e}")
        return out
    except UserError as e:
        out.append(f"error: {e.message} (template {template.name}, {template.origin}); incremental masking needs a "
                   "prefix-preserving template")
        return out
    if train_on != "all" and not _stop_token_trained(tokenizer, text, spans):
        out.append(f"error: template {template.name} never trains an end-of-turn token after the assistant's answer "
                   "with this tokenizer: the model would not learn to stop")
    out += _prefix_warnings(template, tokenizer)
    return out


def _stop_token_trained(tokenizer, text, spans) -> bool:
    from runner.data.tokenize import end_of_turn_ids, eot_trained, labels_from_spans

    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = labels_from_spans(ids, offsets, spans)
    return eot_trained(ids, offsets, labels, spans, text, end_of_turn_ids(tokenizer))


def _prefix_warnings(template, tokenizer) -> list[str]:
    """Say when the official template is not prefix-preserving, so that a training variant is in use."""
    if template.official is None or template.official == template.source:
        return []
    from runner.data.render import Renderer, TemplateRenderError
    from runner.errors import UserError

    tokens = {k: getattr(tokenizer, k, None) for k in ("bos_token", "eos_token")}
    official = Renderer(template.official, tokens, template.kwargs, template.name + " (official)")
    try:
        official.spans(_PROBE, None, "assistant")
    except UserError:
        return [f"warning: the official {template.name} template renders earlier turns differently once later turns "
                f"follow (not prefix-preserving); training uses {template.origin}, which renders every turn the same"]
    except TemplateRenderError:
        return []
    return []
