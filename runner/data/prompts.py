"""Prompt rows for stage grpo: the conversation up to its last user (or tool) turn, rendered by
runner's template with the assistant header the completion continues, as text (TRL must apply no
template of its own), and its reference answer for rewards that need one.

grpo: prompt (text), reference (text, "" when the row has none), prompt_input_ids (for the length
      policy, statistics and the token count).

The reference is the row's answer: a preference row's chosen, the last assistant turn of a
conversation or instruction row (`columns:` maps another column, e.g. {output: solution})."""

from __future__ import annotations

from collections import Counter

from runner.data.formats import RowError
from runner.errors import UserError


def split_prompt(row: dict) -> tuple[list, str]:
    """(messages up to the last user/tool turn, reference text)."""
    messages = list(row["messages"])
    reference = ""
    if row.get("chosen"):
        reference = row["chosen"].get("content") or ""
    elif messages and messages[-1]["role"] == "assistant":
        reference = messages.pop().get("content") or ""
    if not messages or messages[-1]["role"] not in ("user", "tool"):
        raise RowError("the row has no user turn before its answer: there is no prompt to answer")
    return messages, reference


def grpo_rows(items, tokenizer, renderer, seq: dict, progress: bool):
    """`seq["prompt_budget"]`: the most tokens a prompt may have (max_length less the completion's)."""
    from runner.data.tokenize import Encoded, _encode_bounded, _render_all

    def render_one(row):
        messages, reference = split_prompt(row)
        conversation, tools, notes = renderer.prepare(messages, row.get("tools"))
        return (renderer.render(conversation, tools, add_generation_prompt=True), reference), notes

    kept, rendered, notes, skipped = _render_all(items, render_one, progress, renderer)
    ids, _, _ = _encode_bounded(tokenizer, [r[0] for r in rendered], seq, keep="end")
    budget = seq["prompt_budget"]
    counts, policy = Counter(notes), seq.get("truncation", "truncate")
    columns = {"prompt": [], "reference": [], "prompt_input_ids": []}
    origins = []
    for (text, reference), prompt_ids, item in zip(rendered, ids, kept):
        if len(prompt_ids) > budget:
            if policy == "error":
                raise UserError(f"prompt is {len(prompt_ids)} tokens or more, over the {budget} that "
                                f"sequence.max_length={seq.get('max_length')} leaves beside max_completion_length",
                                where=item.origin, hint="raise max_length, or set sequence.truncation")
            if policy == "drop":
                counts["dropped_too_long"] += 1
                continue
            # keep the prompt's end: the question and the assistant header the completion continues
            counts["truncated"] += 1
            prompt_ids = prompt_ids[-budget:]
            text = tokenizer.decode(prompt_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        columns["prompt"].append(text)
        columns["reference"].append(reference)
        columns["prompt_input_ids"].append(list(prompt_ids))
        origins.append(item.origin)
    return Encoded(columns, origins, counts, skipped, len(kept))
