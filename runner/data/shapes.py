"""Chat-template rendering by conversation *shape*: the template runs once per shape (the roles
and which contents are empty), and each row's text and trained spans are then put together from
the template's fixed parts and the row's own contents, with no Jinja per row.

This gives exactly Renderer.spans' result only when the template treats message contents as
opaque text: it emits them (alone or concatenated) and may test whether they are empty, and
nothing else. That is proven per shape, not assumed:

- the template is rendered with stand-in contents (_Probe, a str that records what is done with
  it): any method, comparison, length, membership, slicing, hashing or formatting of a content
  (`| trim`, `.split('</think>')`, `'x' in content`, `== ''`) makes the shape fall back;
- every stand-in must reach the output only through a recorded emission, so a content that
  leaves by an unrecorded route (`tojson`, `join`) makes it fall back too; templates that turn
  contents into plain strings where they can no longer be followed (Jinja's `~`, `%`, `format`)
  are not probed at all;
- a content captured as plain text (`{% filter %}` and `{% set %}` blocks, a macro's result) and
  changed there, or read by C code a probe cannot see (`| wordcount`, `in 'a literal'`), keeps the
  sentinels intact: each shape is also rendered with awkward contents (spaces around, capitals,
  several words, a number) and must equal its filling with them; `in` a string literal is not probed;
- the generation prompt of each trained turn must be a prefix of the whole rendering, and every
  span boundary must fall outside a content, so that the positions carry over to any contents;
- the first rows of every shape, and one row in VERIFY_EVERY after that, are also rendered by
  Renderer.spans and compared; a difference abandons the shortcut for the whole split.

Rows with tool calls, tool definitions or extra message keys always take Renderer.spans.
"""

from __future__ import annotations

import re
from itertools import accumulate

from runner.data.render import time_bound

# Set False to render every row with the template (the reference path the tests compare against).
ENABLED = True
VERIFY_FIRST = 2
VERIFY_EVERY = 512
# Rows rendered by shape so far: tests prove the shortcut ran.
ROWS_BY_SHAPE = 0

# Template constructs whose results are plain strings that a _Probe can no longer follow.
_UNTRACKED_FILTERS = {"format", "join", "replace", "wordwrap", "center", "indent", "truncate", "urlize",
                      "xmlattr", "striptags", "filesizeformat", "pprint", "sum", "map", "select", "reject"}

_events: list | None = None  # what probes saw while a shape is being probed


def _note(what: str) -> None:
    if _events is not None:
        _events.append(what)


class _Probe(str):
    """A content stand-in. Concatenation keeps the stand-in (so that what is built from it is
    still followed); str() is an emission; anything else that could depend on the text is noted."""

    __slots__ = ()

    def __getattribute__(self, name):
        if name != "__class__":
            _note(f"attribute {name}")
        return str.__getattribute__(self, name)

    def __str__(self):
        _note(("emit", str.__str__(self)))
        return str.__str__(self)

    def __add__(self, other):
        if not isinstance(other, str):
            _note("add to a non-string")
            return NotImplemented
        return _Probe(str.__add__(str.__str__(self), str.__str__(other)))

    def __radd__(self, other):
        if not isinstance(other, str):
            _note("add to a non-string")
            return NotImplemented
        return _Probe(str.__add__(other, str.__str__(self)))

    def __bool__(self):  # contents that are empty are part of the shape; a probe never is
        return True

    def _seen(name):  # noqa: N805 (a factory for the operators below)
        def method(self, *args):
            _note(name)
            return getattr(str, name)(str.__str__(self), *args)
        return method

    for _name in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__hash__", "__len__", "__contains__",
                  "__getitem__", "__iter__", "__mul__", "__rmul__", "__mod__", "__rmod__", "__format__", "__repr__",
                  "__reduce__", "__reduce_ex__", "__getnewargs__", "__sizeof__"):
        locals()[_name] = _seen(_name)
    del _name, _seen


def _sentinel(i: int) -> str:
    return f"\ue000q7x{i}\ue001"


class ShapeRenderer:
    """Renderer.spans(messages, tools, train_on) for one split, by shape when that is proven exact."""

    def __init__(self, renderer, train_on: str):
        self.renderer, self.train_on = renderer, train_on
        self.shapes: dict = {}  # shape key -> _Shape, or None: rendered row by row
        self.seen: dict = {}    # shape key -> rows rendered by shape so far
        self.usable = ENABLED and _opaque_syntax(renderer)

    def spans(self, messages: list, tools) -> tuple[str, list[tuple[int, int]]] | None:
        """(text, spans) of the conversation, or None where only the template itself can tell."""
        if not self.usable or tools:
            return None
        key = []
        for m in messages:
            content = m.get("content")
            if len(m) != 2 or content.__class__ is not str or m.get("role").__class__ is not str:
                return None
            key.append((m["role"], content != ""))
        key = tuple(key)
        shape = self.shapes.get(key, False)
        if shape is False:
            with time_bound(self.renderer.name):
                shape = self.shapes[key] = _probe(self.renderer, key, self.train_on)
        if shape is None:
            return None
        result = shape.fill([m["content"] for m in messages])
        n = self.seen[key] = self.seen.get(key, 0) + 1
        if n <= VERIFY_FIRST or n % VERIFY_EVERY == 0:
            with time_bound(self.renderer.name):
                same = self.renderer.spans(messages, None, self.train_on) == result
            if not same:
                raise ShapeMismatch(f"template {self.renderer.name}: rendering by shape differs for roles "
                                    f"{[r for r, _ in key]}")
        global ROWS_BY_SHAPE
        ROWS_BY_SHAPE += 1
        return result


def quick_renderer(renderer, train_on: str):
    """`quick(row)` for runner.data.tokenize's _render_all: the row's ((text, spans), notes) by
    shape, or None where the row must be rendered; None instead of a function when no row can be."""
    shapes = ShapeRenderer(renderer, train_on)
    if not shapes.usable:
        return None

    def quick(row):
        if renderer._caps is None:  # the template's first renderings happen inside the row's time bound
            return None
        messages, tools, notes = renderer.prepare(row["messages"], row.get("tools"))
        found = shapes.spans(messages, tools)
        return None if found is None else (found, notes)

    return quick


class ShapeMismatch(Exception):
    """A verified row came out differently by shape: the split is rendered again row by row."""


class _Shape:
    """The fixed parts of one shape's rendering and its spans as (part index, offset) pairs."""

    def __init__(self, parts: list, bounds: list):
        self.parts, self.bounds = parts, bounds

    def fill(self, contents: list) -> tuple[str, list[tuple[int, int]]]:
        pieces = [p if p.__class__ is str else contents[p] for p in self.parts]
        starts = list(accumulate(map(len, pieces), initial=0))
        return "".join(pieces), [(starts[a] + x, starts[b] + y) for (a, x), (b, y) in self.bounds]


def _opaque_syntax(renderer) -> bool:
    """False for templates that use constructs a _Probe cannot follow."""
    try:
        from jinja2 import nodes

        tree = renderer.compiled.environment.parse(renderer.source)
    except Exception:
        return False
    if any(True for _ in tree.find_all((nodes.Concat, nodes.Mod))):
        return False
    # `content in 'yes no'` (or in a variable holding a string) is answered by str's own C code,
    # which never asks the probe. A membership test is followed only when its container is a literal
    # list, tuple or dict (their elements compare through the probe's __eq__) or its left side is a
    # literal (`'tool_calls' in message`: a probe on the right is asked through __contains__).
    tests = []
    for compare in tree.find_all(nodes.Compare):
        left = compare.expr
        for op in compare.ops:  # `a < b in c`: b is the left side of `in`
            if op.op in ("in", "notin"):
                tests.append((left, op.expr))
            left = op.expr
    tests += [(t.node, t.args[0]) for t in tree.find_all(nodes.Test) if t.name == "in" and t.args]
    containers = (nodes.List, nodes.Tuple, nodes.Dict)
    if any(not isinstance(right, containers) and not isinstance(left, nodes.Const) for left, right in tests):
        return False
    return not any(f.name in _UNTRACKED_FILTERS for f in tree.find_all(nodes.Filter))


class _NotOpaque(Exception):
    pass


def _traced(render, sentinels) -> str:
    """render()'s text, after checking that the probes were only emitted, and that every sentinel
    in the text came from a recorded emission."""
    global _events
    _events = []
    try:
        text = render()
        events = _events
    finally:
        _events = None
    if any(e.__class__ is not tuple for e in events):
        raise _NotOpaque
    if isinstance(text, tuple):  # Renderer.spans: its renderings were checked one by one above
        return text
    emitted = "".join(t for _, t in events)
    if any(emitted.count(s) != text.count(s) for s in sentinels):
        raise _NotOpaque
    return text


def _probe(renderer, key: tuple, train_on: str):
    """The _Shape of conversations of this shape, or None when it cannot be proven exact."""
    sentinels = {i: _sentinel(i) for i, (_, filled) in enumerate(key) if filled}
    if "\ue000" in renderer.source or "\ue001" in renderer.source:
        return None
    messages = [{"role": role, "content": _Probe(sentinels[i]) if filled else ""}
                for i, (role, filled) in enumerate(key)]
    marked = renderer.has_markers and hasattr(renderer.compiled, "environment")
    turns = [i for i, (role, _) in enumerate(key) if role == "assistant"] if train_on != "all" else []
    if train_on == "last_assistant":
        turns = turns[-1:]
    values = list(sentinels.values())
    try:
        full = _traced(lambda: renderer.render_tracked(messages)[0] if marked else renderer.render(messages), values)
        for i in turns:
            prefixes = [messages[:i]] if i else []
            if not marked and i + 1 < len(messages):
                prefixes.append(messages[:i + 1])
            for k, prefix in enumerate(prefixes):
                text = _traced(lambda: renderer.render(prefix, add_generation_prompt=k == 0 and i > 0), values)
                if not full.startswith(text):  # the positions would depend on the contents
                    return None
        spans = _traced(lambda: renderer.spans(messages, None, train_on), values)
    except _NotOpaque:
        return None
    except Exception:  # the template refuses this shape: each row gets its own error, row by row
        return None
    if spans[0] != full:
        return None
    shape = _split(full, spans[1], sentinels)
    if shape is None:
        return None
    for awkward in (" Two Words\n", "7"):
        contents = [f"{awkward}{i}" if filled else "" for i, (_, filled) in enumerate(key)]
        plain = [{"role": role, "content": c} for (role, _), c in zip(key, contents)]
        try:
            same = renderer.spans(plain, None, train_on) == shape.fill(contents)
        except Exception:
            return None
        if not same:
            return None
    return shape


def _split(full: str, spans: list, sentinels: dict):
    index = {s: i for i, s in sentinels.items()}
    parts, starts, pos = [], [], 0
    if index:
        for m in re.finditer("|".join(map(re.escape, index)), full):
            parts.append(full[pos:m.start()])
            starts.append(pos)
            parts.append(index[m.group()])
            starts.append(m.start())
            pos = m.end()
    parts.append(full[pos:])
    starts.append(pos)
    bounds = []
    for span in spans:
        pair = []
        for p in span:
            k = max(j for j, s in enumerate(starts) if s <= p and parts[j].__class__ is str)
            if p - starts[k] > len(parts[k]):  # strictly inside a content
                return None
            pair.append((k, p - starts[k]))
        bounds.append(tuple(pair))
    return _Shape(parts, bounds)
