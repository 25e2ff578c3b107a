"""JSON inside dataset rows, read with a bound on nesting: a hostile row nested thousands of
levels deep is a bad row (RowError), never a RecursionError in the parser, the substitution or
the chat template's tojson. Pure Python, no heavy imports."""

from __future__ import annotations

import json

# Nesting a row (or JSON text inside one of its fields) may have. Real rows nest a few levels
# (tool schemas perhaps a dozen); far deeper structures only exhaust the recursion of the JSON
# parser, the substitution and the template's tojson.
MAX_DEPTH = 100


class RowError(ValueError):
    """A malformed row; the message is the reason shown to the user."""


def nesting_depth(value, limit: int = MAX_DEPTH) -> int:
    """How deep lists and objects nest in `value`, counted without recursion; stops past `limit`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        elif not isinstance(node, (list, tuple)):
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in node if isinstance(child, (dict, list, tuple)))
    return deepest


def check_depth(value, what: str) -> None:
    if nesting_depth(value) > MAX_DEPTH:
        raise RowError(f"{what}: nested more than {MAX_DEPTH} levels deep")


def loads(text: str, what: str, invalid: str | None = None):
    """JSON text held in a field, parsed with the depth bound; `invalid` is the message for bad JSON."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise RowError(f"{what}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as e:
        raise RowError(invalid or f"{what} is not valid JSON: {e}") from None
    check_depth(value, what)
    return value
