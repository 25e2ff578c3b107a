"""Edit one scalar of a YAML text in place, keeping its comments, order and style: the form sets
`training.learning_rate` and the text beside it changes on that line only. Positions come from
runner's own YAML reader (runner.config.yamlsafe), so the key found is the key the loader reads."""
from __future__ import annotations

import json
import re

from runner.config.yamlsafe import load_yaml
from runner.errors import UserError

PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}


def render_scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if PLAIN.match(value) and value.lower() not in RESERVED else json.dumps(value)
    raise UserError(f"only a number, string, boolean or null can be set from the form, got {type(value).__name__}",
                    hint="edit lists and mappings in the YAML")


def _value_span(line: str, start: int, flow: bool) -> tuple[int, int]:
    """Where the value after `key:` begins and ends on `line` (comment and flow separators left out)."""
    colon = line.index(":", start)
    begin = colon + 1
    while begin < len(line) and line[begin] == " ":
        begin += 1
    end, quote, depth = begin, None, 0
    while end < len(line):
        ch = line[end]
        if quote:
            if ch == quote and line[end - 1] != "\\":
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            if depth == 0 and flow:
                break
            depth -= 1
        elif ch == "," and flow and depth == 0:
            break
        elif ch == "#" and end > 0 and line[end - 1] in " \t":
            break
        end += 1
    while end > begin and line[end - 1] in " \t":
        end -= 1
    return begin, end


def _in_flow(line: str, col: int) -> bool:
    before = line[:col].rstrip()
    return before.endswith(("{", ","))


def _lookup(data, path):
    for key in path:
        data = data[key]
    return data


def set_value(text: str, path: tuple, value) -> str:
    """`text` with the scalar at `path` (a tuple of keys) set to `value`, added when missing."""
    located = load_yaml(text, "config")
    data, positions = located.value, located.positions
    lines = text.split("\n")
    if path in positions:
        current = _lookup(data, path)
        if isinstance(current, (dict, list)):
            raise UserError(f"{'.'.join(map(str, path))} is a {type(current).__name__} in the YAML",
                            hint="edit it in the YAML")
        line_no, col = (int(x) for x in positions[path].rsplit(":", 2)[1:])
        line = lines[line_no - 1]
        begin, end = _value_span(line, col - 1, _in_flow(line, col - 1))
        lines[line_no - 1] = line[:begin] + render_scalar(value) + line[end:]
        return "\n".join(lines)
    parent = path[:-1]
    while parent and parent not in positions:
        parent = parent[:-1]
    missing = path[len(parent):]
    if parent and not isinstance(_lookup(data, parent), dict):
        raise UserError(f"{'.'.join(map(str, parent))} is not a mapping in the YAML", hint="edit it in the YAML")
    children = [p for p in positions if len(p) == len(parent) + 1 and p[: len(parent)] == parent]
    if parent and children:
        first_line, first_col = (int(x) for x in positions[children[0]].rsplit(":", 2)[1:])
        if _in_flow(lines[first_line - 1], first_col - 1):  # `adapter: {kind: lora, r: 16}`
            return _add_to_flow(lines, children, positions, missing, value)
        indent = first_col - 1
    else:
        indent = 0 if not parent else int(positions[parent].rsplit(":", 2)[2]) - 1 + 2
    below = [p for p in positions if p[: len(parent)] == parent and p != parent] or ([parent] if parent else [])
    last = max((int(positions[p].rsplit(":", 2)[1]) for p in below), default=len(lines))
    new = [f"{' ' * (indent + 2 * i)}{key}:" for i, key in enumerate(missing[:-1])]
    new.append(f"{' ' * (indent + 2 * (len(missing) - 1))}{missing[-1]}: {render_scalar(value)}")
    if not parent:
        while lines and lines[-1] == "":
            lines.pop()
        return "\n".join(lines + new) + "\n"
    return "\n".join(lines[:last] + new + lines[last:])


def _add_to_flow(lines, children, positions, missing, value) -> str:
    line_no = max(int(positions[p].rsplit(":", 2)[1]) for p in children)
    line = lines[line_no - 1]
    last_col = max(int(positions[p].rsplit(":", 2)[2]) for p in children
                   if int(positions[p].rsplit(":", 2)[1]) == line_no)
    _, end = _value_span(line, last_col - 1, True)
    item = render_scalar(value)
    for key in reversed(missing[1:]):
        item = f"{{{key}: {item}}}"
    lines[line_no - 1] = f"{line[:end]}, {missing[0]}: {item}{line[end:]}"
    return "\n".join(lines)
