"""YAML reading for configs: YAML 1.2 core typing, bounded size, depth and alias expansion, no tags
that construct objects, and the source position of every key and value.

PyYAML resolves scalars by YAML 1.1 (`2e-4` is a string, `on` is a boolean), expands aliases without
limit (a 450-byte "billion laughs" never finishes) and forgets positions after construction. We let
it parse and compose nodes (fast, C when available), then build Python values ourselves.
"""

from __future__ import annotations

import copy
import os
import re
import stat
from dataclasses import dataclass, field

import yaml

from runner.errors import UserError

MAX_BYTES = 1 << 20  # a config is a page of YAML; 1 MiB leaves room for generated ones
MAX_NODES = 20_000  # values built, counting each alias expansion again
MAX_DEPTH = 64

# libyaml's parser when present (fast; we build values from its events ourselves, see _Builder).
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
    """Builds values from the parser's event stream with an explicit stack (libyaml's composer
    recurses in C per nesting level, so 30,000 nested brackets in a 60 KB file would crash it), and
    stops as soon as the depth or the number of values (aliases counted again) goes over its bound."""

    def __init__(self, source: str):
        self.source = source
        self.count = 0
        self.positions: dict = {}
        self.anchors: dict = {}
        self.stack: list = []  # frames: [container, path, pending_key, anchor, count_at_start]
        self.root = None
        self.done = False

    def where(self, mark) -> str:
        return f"{self.source}:{mark.line + 1}:{mark.column + 1}"

    def _grow(self, n: int, mark) -> None:
        self.count += n
        if self.count > MAX_NODES:
            raise UserError(
                f"the document holds more than {MAX_NODES:,} values, counting each alias expansion again",
                where=self.where(mark),
                hint="a config holds a few hundred values; anchors and aliases (&a / *a) that multiply are refused",
            )

    def _attach(self, value, mark, is_container: bool = False) -> bool:
        """Put a value in its parent. Returns False if it was a mapping key instead."""
        if not self.stack:
            if self.done:
                raise UserError("only one YAML document per config file", where=self.where(mark))
            self.root, self.done = value, True
            self.positions[()] = self.where(mark)
            return True
        frame = self.stack[-1]
        container, path = frame[0], frame[1]
        if isinstance(container, dict):
            if frame[2] is None:
                if is_container:
                    raise UserError("a mapping key must be a plain value, not a list or mapping",
                                    where=self.where(mark))
                self._key(frame, value, mark)
                return False
            key = frame[2]
            container[key] = value
            frame[2] = None
            return True
        self.positions[path + (len(container),)] = self.where(mark)
        container.append(value)
        return True

    def _key(self, frame, key, mark) -> None:
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise UserError(f"a mapping key must be a string, got {key!r}", where=self.where(mark))
        key = str(key)
        if key == "<<":
            raise UserError("YAML merge keys (<<) are not supported", where=self.where(mark),
                            hint="use `extends:` to share a base config")
        if key in frame[0]:
            raise UserError(f"duplicate key {key!r}", where=self.where(mark),
                            hint="each key may appear once in a mapping; the later one would silently win")
        frame[2] = key
        self.positions[frame[1] + (key,)] = self.where(mark)

    def _child_path(self) -> tuple:
        if not self.stack:
            return ()
        container, path, key = self.stack[-1][0], self.stack[-1][1], self.stack[-1][2]
        return path + ((key,) if isinstance(container, dict) else (len(container),))

    def event(self, ev) -> None:
        mark = ev.start_mark
        if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            is_map = isinstance(ev, yaml.MappingStartEvent)
            want = "tag:yaml.org,2002:map" if is_map else "tag:yaml.org,2002:seq"
            if ev.tag not in (None, "!", want):
                raise UserError(f"the YAML tag {ev.tag!r} is not allowed in a config", where=self.where(mark),
                                hint="configs hold plain maps, lists, strings, numbers, booleans and null")
            if len(self.stack) >= MAX_DEPTH:
                raise UserError(f"nesting deeper than {MAX_DEPTH} levels", where=self.where(mark),
                                hint="a config is a few levels deep; this file is not a config")
            self._grow(1, mark)
            if self.stack and isinstance(self.stack[-1][0], dict) and self.stack[-1][2] is None:
                raise UserError("a mapping key must be a plain value, not a list or mapping", where=self.where(mark))
            path = self._child_path()
            container: dict | list = {} if is_map else []
            self._attach(container, mark, is_container=True)
            self.stack.append([container, path, None, ev.anchor, self.count])
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            container, _path, _key, anchor, started = self.stack.pop()
            if anchor:
                self.anchors[anchor] = (container, self.count - started + 1)
        elif isinstance(ev, yaml.ScalarEvent):
            self._grow(1, mark)
            value = self._scalar(ev)
            self._attach(value, mark)
            if ev.anchor:
                self.anchors[ev.anchor] = (value, 1)
        elif isinstance(ev, yaml.AliasEvent):
            if ev.anchor not in self.anchors:
                raise UserError(f"unknown alias *{ev.anchor}", where=self.where(mark))
            value, size = self.anchors[ev.anchor]
            self._grow(size, mark)
            self._attach(copy.deepcopy(value), mark, is_container=isinstance(value, (dict, list)))

    def _scalar(self, ev):
        where = self.where(ev.start_mark)
        tag = ev.tag
        if tag in (None, "!"):
            if tag is None and ev.implicit[0]:
                tag = _Core12Loader.resolve(_Core12Loader, yaml.ScalarNode, ev.value, (True, False))
            else:
                tag = "tag:yaml.org,2002:str"
        try:
            return _build_scalar(tag, ev.value, self.source, where)
        except ValueError:
            from runner.config.schema import is_secret

            path = self._child_path()
            shown = f"the value of {'.'.join(map(str, path))} (secret: not shown)" if is_secret(path) else repr(ev.value)
            raise UserError(f"{shown} is not a valid {tag.rsplit(':', 1)[-1]}", where=where) from None


_KINDS = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]


def special_kind(path) -> str | None:
    """What a path is when it is not a regular file ("a named pipe (FIFO)", ...); None for a file
    or a path that does not exist."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else _kind(mode)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _not_a_file(mode: int, source: str) -> UserError:
    kind = _kind(mode)
    return UserError(f"{source} is {kind}, not a config file", where=source,
                     hint="configs (and the bases that extends: names) are read from regular files only")


def read_bounded(path, source: str, what: str = "config file") -> bytes:
    """The bytes of a config file, refusing before reading anything what is not a regular file
    (a FIFO or socket would block forever, /dev/zero never ends) or is over MAX_BYTES. The open
    does not block and the descriptor itself is checked again, so a file swapped for a pipe
    between the two checks is refused too."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {source}") from None
    except OSError as err:
        raise UserError(f"cannot read the {what}: {err.strerror}", where=source) from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_a_file(st.st_mode, source)
    if st.st_size > MAX_BYTES:
        raise _too_big(st.st_size, source)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as err:
        raise UserError(f"cannot read the {what}: {err.strerror}", where=source) from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise _not_a_file(mode, source)
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise _too_big(len(data), source, at_least=True)
    return data


def _too_big(size: int, source: str, at_least: bool = False) -> UserError:
    size_text = f"more than {MAX_BYTES:,}" if at_least else f"{size:,}"
    return UserError(
        f"the file is {size_text} bytes; configs are limited to {MAX_BYTES:,}",
        where=source,
        hint="a config describes a run; put data in dataset files",
    )


def load_yaml(text: str | bytes, source: str) -> Located:
    """Parse one YAML document into plain values and positions. Raises UserError with a location."""
    if len(text) > MAX_BYTES:
        raise _too_big(len(text), source)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            line = text.count(b"\n", 0, err.start) + 1
            col = err.start - (text.rfind(b"\n", 0, err.start) + 1) + 1
            raise UserError(f"not UTF-8 text (byte {err.start})", where=f"{source}:{line}:{col}",
                            hint="save the file as UTF-8") from None
    builder = _Builder(source)
    try:
        for ev in yaml.parse(text, Loader=_Core12Loader):
            builder.event(ev)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise UserError(f"malformed YAML: {err.problem or err.context}", where=where) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        col = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        char = err.character if isinstance(err.character, int) else ord(err.character)
        raise UserError(f"character U+{char:04X} is not allowed in YAML ({err.reason})",
                        where=f"{source}:{line}:{col}", hint="remove control characters and NUL bytes") from None
    except yaml.YAMLError as err:
        raise UserError(f"malformed YAML: {err}", where=source) from None
    if builder.root is None:
        raise UserError("the file is empty", where=source, hint="a config needs at least `model:` and `datasets:`")
    return Located(builder.root, builder.positions)
