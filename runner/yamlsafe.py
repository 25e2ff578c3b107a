"""YAML reading for configs: YAML 1.2 core typing, bounded size, depth and alias expansion, no tags
that construct objects, and the source position of every key and value.

PyYAML resolves scalars by YAML 1.1 (`2e-4` is a string, `on` is a boolean), expands aliases without
limit (a 450-byte "billion laughs" never finishes) and forgets positions after construction. We let
it parse and compose nodes (fast, C when available), then build Python values ourselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from runner.errors import UserError

MAX_BYTES = 1 << 20  # a config is a page of YAML; 1 MiB leaves room for generated ones
MAX_NODES = 20_000  # values built, counting each alias expansion again
MAX_DEPTH = 64

# libyaml when present (fast). It recurses in C per nesting level, so a 60 KB file of brackets would
# crash the process: _check_depth refuses deep nesting before libyaml sees the text.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Core12Loader(_Loader):
    """Composes nodes with YAML 1.2 core-schema implicit typing."""


_Core12Loader.yaml_implicit_resolvers = {}
for _tag, _regex, _first in [
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+0123456789."),
    ),
]:
    _Core12Loader.add_implicit_resolver(_tag, re.compile(_regex), _first)

_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
}


@dataclass
class Located:
    """Built values plus where each came from: positions[(key, 0, ...)] = "file:line:col"."""

    value: object
    positions: dict = field(default_factory=dict)


def _where(source: str, node) -> str:
    return f"{source}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def scalar(text: str):
    """Type one scalar the way a YAML 1.2 config value is typed (used for CLI overrides too)."""
    tag = _Core12Loader.resolve(_Core12Loader, yaml.ScalarNode, text, (True, False))
    return _build_scalar(tag, text, source="<command line>", where="<command line>")


def _build_scalar(tag: str, text: str, source: str, where: str):
    if tag == "tag:yaml.org,2002:str":
        return text
    if tag == "tag:yaml.org,2002:null":
        return None
    if tag == "tag:yaml.org,2002:bool":
        return text.lower() == "true"
    if tag == "tag:yaml.org,2002:int":
        if text.startswith("0o"):
            return int(text[2:], 8)
        return int(text, 0) if text.startswith("0x") else int(text)
    if tag == "tag:yaml.org,2002:float":
        low = text.lower().lstrip("+")
        if low in (".inf", "-.inf"):
            return float(low.replace(".", ""))
        return float("nan") if low == ".nan" else float(text)
    raise UserError(
        f"the YAML tag {tag!r} is not allowed in a config",
        where=where,
        hint="configs hold plain maps, lists, strings, numbers, booleans and null; remove the tag",
    )


class _Builder:
    def __init__(self, source: str):
        self.source = source
        self.count = 0
        self.positions: dict = {}

    def build(self, node, path: tuple, depth: int):
        self.count += 1
        if self.count > MAX_NODES:
            raise UserError(
                f"the document expands to more than {MAX_NODES:,} values (alias expansion?)",
                where=_where(self.source, node),
                hint="anchors and aliases (&a / *a) that multiply are refused; write the values out",
            )
        if depth > MAX_DEPTH:
            raise UserError(f"nesting deeper than {MAX_DEPTH} levels", where=_where(self.source, node))
        self.positions.setdefault(path, _where(self.source, node))
        if isinstance(node, yaml.MappingNode):
            if node.tag != "tag:yaml.org,2002:map":
                raise UserError(f"the YAML tag {node.tag!r} is not allowed", where=_where(self.source, node))
            out: dict = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise UserError("YAML merge keys (<<) are not supported", where=_where(self.source, key_node),
                                    hint="use `extends:` to share a base config")
                key = self.build(key_node, path + ("<key>",), depth + 1)
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    raise UserError(f"a mapping key must be a string, got {key!r}", where=_where(self.source, key_node))
                key = str(key)
                if key in out:
                    raise UserError(f"duplicate key {key!r}", where=_where(self.source, key_node),
                                    hint="each key may appear once in a mapping; the later one would silently win")
                self.positions[path + (key,)] = _where(self.source, key_node)
                out[key] = self.build(value_node, path + (key,), depth + 1)
                self.positions[path + (key,)] = _where(self.source, key_node)
            self.positions.pop(path + ("<key>",), None)
            return out
        if isinstance(node, yaml.SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                raise UserError(f"the YAML tag {node.tag!r} is not allowed", where=_where(self.source, node))
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        if node.tag not in _SCALAR_TAGS:
            raise UserError(
                f"the YAML tag {node.tag!r} is not allowed in a config",
                where=_where(self.source, node),
                hint="configs hold plain maps, lists, strings, numbers, booleans and null; remove the tag",
            )
        try:
            return _build_scalar(node.tag, node.value, self.source, _where(self.source, node))
        except ValueError:
            raise UserError(f"{node.value!r} is not a valid {node.tag.rsplit(':', 1)[-1]}",
                            where=_where(self.source, node)) from None


_QUOTED = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*')
_BRACKETS = re.compile(r"[\[\]{}]")
_DASHES = re.compile(r"^(?:[ \t]*-[ \t]+){%d,}" % (MAX_DEPTH + 1), re.MULTILINE)


def _check_depth(text: str, source: str) -> None:
    """Refuse deep nesting before parsing: a parser spends seconds (or its stack) on 10,000 levels."""
    depth = deepest = 0
    for ch in _BRACKETS.findall(_QUOTED.sub("", text)):
        depth += 1 if ch in "[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_DEPTH or _DASHES.search(text):
        raise UserError(f"nesting deeper than {MAX_DEPTH} levels", where=source,
                        hint="a config is a few levels deep; this file is not a config")


def load_yaml(text: str | bytes, source: str) -> Located:
    """Parse one YAML document into plain values and positions. Raises UserError with a location."""
    if len(text) > MAX_BYTES:
        raise UserError(
            f"the file is {len(text):,} bytes; configs are limited to {MAX_BYTES:,}",
            where=source,
            hint="a config describes a run; put data in dataset files",
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"not UTF-8 text (byte {err.start})", where=source) from None
    _check_depth(text, source)
    try:
        node = yaml.compose(text, Loader=_Core12Loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise UserError(f"malformed YAML: {err.problem or err.context}", where=where) from None
    except yaml.YAMLError as err:
        raise UserError(f"malformed YAML: {err}", where=source) from None
    except RecursionError:
        raise UserError(f"nesting deeper than {MAX_DEPTH} levels", where=source,
                        hint="a config is a few levels deep; this file is not a config") from None
    if node is None:
        raise UserError("the file is empty", where=source, hint="a config needs at least `model:` and `datasets:`")
    builder = _Builder(source)
    value = builder.build(node, (), 0)
    return Located(value, builder.positions)
