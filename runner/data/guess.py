"""Which format rows look like when they miss the fields of the format the config names, so that
the error can say `these rows look like alpaca: set format: alpaca` instead of only `missing field`."""

from __future__ import annotations

from runner.data.formats import Normalizer, RowError

# (format, fields that mark it), most specific first: a preference row also has a conversation,
# a kto row a label beside its messages.
SIGNATURES = (
    ("preference", ("chosen", "rejected")),
    ("kto", ("label",)),
    ("sharegpt", ("conversations",)),
    ("openai", ("messages",)),
    ("dolly", ("instruction", "response")),
    ("alpaca", ("instruction", "output")),
    ("prompt_completion", ("prompt", "completion")),
    ("text", ("text",)),
)


SAME_AS = {"self_instruct": "alpaca", "messages": "openai"}


def guess_format(row, current: str) -> str | None:
    """A format other than `current` that reads this row with its default columns, or None. A row
    holding the fields of `current` is taken for a malformed row of it, unless a more specific
    format reads it (preference rows under sharegpt)."""
    if not isinstance(row, dict):
        return None
    order = [fmt for fmt, _ in SIGNATURES]
    current = SAME_AS.get(current, current)
    has_own = all(f in row for f in dict(SIGNATURES).get(current, ()))
    for fmt, fields in SIGNATURES:
        if fmt == current or not all(f in row for f in fields):
            continue
        if has_own and order.index(fmt) > order.index(current):
            continue
        try:
            Normalizer(fmt)(row)
        except RowError:
            continue
        return fmt
    return None
