"""Tokenizing with memory bounded per row: a text certainly longer than the length limit is cut by
characters before it is tokenized, so a valid 50 MB row costs what its first max_length tokens do.

A token covers at most as many characters as its longest vocabulary entry has (byte-level
entries are one character per byte; a byte-fallback entry like <0x0A> is longer than its byte),
so the first N tokens of a text lie within its first N * longest characters. The cut keeps
MARGIN tokens more than the limit, so that the tokens the length policy keeps never touch the cut,
and it is checked: when the cut text does not yield that many tokens (a normalizer that removes
characters), the cut is widened until it does or the text is whole.

Only the policies that keep a prefix (truncate, drop, error) or, for preference prompts, a suffix
are cut; `split` keeps every token and reads the whole text.
"""

from __future__ import annotations

MARGIN = 32


def max_token_chars(tokenizer) -> int:
    """Characters of the longest vocabulary entry or added token (at least 1)."""
    vocab = tokenizer.get_vocab()
    return max(1, max((len(t) for t in vocab), default=1))


def encode_bounded(encode, texts: list, limit: int | None, token_chars: int, keep: str = "start"):
    """(ids, offsets, cuts): `encode(texts) -> (ids, offsets)` on the texts, each cut to the part the
    length policy can keep when it is certainly longer than `limit` tokens. cuts[i] is None for a
    whole text, else how many characters were kept (from the start, or from the end for keep="end").
    Offsets of a text cut from the start are offsets into the whole text."""
    cuts = [None] * len(texts)
    if limit is None:
        ids, offs = encode(texts)
        return ids, offs, cuts
    width = (limit + MARGIN) * token_chars
    cut_texts = list(texts)
    for i, text in enumerate(texts):
        if len(text) > width:
            cut_texts[i], cuts[i] = _cut(text, width, keep), width
    ids, offs = encode(cut_texts)
    for i, text in enumerate(texts):
        chars = cuts[i]
        while chars is not None and len(ids[i]) < limit + MARGIN:
            chars = chars * 4 if chars * 4 < len(text) else None
            (one_ids,), (one_offs,) = _one(encode, _cut(text, chars, keep) if chars else text)
            ids[i] = one_ids
            if offs:
                offs[i] = one_offs
            cuts[i] = chars
    return ids, offs, cuts


def _cut(text: str, chars: int, keep: str) -> str:
    return text[:chars] if keep == "start" else text[-chars:]


def _one(encode, text):
    ids, offs = encode([text])
    return ids, (offs or [None])
