"""A small renderer for the subset of Go's text/template that Ollama Modelfile templates use, for
tests: text, `{{- -}}` whitespace trimming, `.Field` and `$.Field`, `$var :=` / `$var =`,
`if` / `else if` / `else` / `end`, `range`, string literals, parentheses and the functions `eq`,
`ne`, `and`, `or`, `not`. Truthiness, trimming and variable scoping follow Go's documentation
(an assignment inside `if` or `range` changes the variable declared outside it)."""
from __future__ import annotations

import re

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def _lex(template: str):
    parts, pos = [], 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        parts.append(("text", text))
        parts.append(("action", m.group(2).strip(), bool(m.group(3))))
        pos = m.end()
    parts.append(("text", template[pos:]))
    out, trim_next = [], False
    for part in parts:
        if part[0] == "text":
            out.append(("text", part[1].lstrip() if trim_next else part[1]))
            trim_next = False
        else:
            out.append(("action", part[1]))
            trim_next = part[2]
    return out


def _parse(tokens, i=0, stop=("end",)):
    """-> (nodes, index of the stopping action, that action's text)"""
    nodes = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
            continue
        word = value.split(None, 1)[0] if value else ""
        if word in ("end", "else"):
            return nodes, i, value
        if word in ("if", "range"):
            branches, expr = [], value[len(word):].strip()
            while True:
                body, i, closing = _parse(tokens, i + 1)
                branches.append((expr, body))
                if closing == "end":
                    break
                rest = closing[len("else"):].strip()
                expr = rest[len("if"):].strip() if rest.startswith("if") else None
            nodes.append((word, branches))
            i += 1
            continue
        nodes.append(("expr", value))
        i += 1
    return nodes, i, None


def _split(expr: str):
    return re.findall(r'"(?:\\.|[^"\\])*"|\(|\)|[^\s()]+', expr)


class _Ctx:
    def __init__(self, root):
        self.root, self.scopes = root, [{"$": root}]

    def lookup(self, name):
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise KeyError(f"undefined variable {name}")

    def assign(self, name, value):
        for scope in reversed(self.scopes):
            if name in scope:
                scope[name] = value
                return
        raise KeyError(f"assignment to undeclared {name}")


def _field(value, path):
    for part in filter(None, path.split(".")):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


def _truthy(value) -> bool:
    return bool(value)


FUNCS = {"eq": lambda a, *b: any(a == x for x in b), "ne": lambda a, b: a != b, "not": lambda a: not _truthy(a),
         "and": lambda *a: next((x for x in a if not _truthy(x)), a[-1]),
         "or": lambda *a: next((x for x in a if _truthy(x)), a[-1])}


def _eval(tokens, ctx, dot):
    def operand(pos):
        tok = tokens[pos]
        if tok == "(":
            depth, end = 1, pos + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(tokens[end], 0)
                end += 1
            return _eval(tokens[pos + 1:end - 1], ctx, dot), end
        if tok.startswith('"'):
            return bytes(tok[1:-1], "utf-8").decode("unicode_escape"), pos + 1
        if tok.startswith("$"):
            name, _, path = tok.partition(".")
            return _field(ctx.lookup(name), path), pos + 1
        if tok.startswith("."):
            return _field(dot, tok), pos + 1
        raise ValueError(f"unsupported token {tok!r}")

    if tokens[0] in FUNCS:
        args, pos = [], 1
        while pos < len(tokens):
            value, pos = operand(pos)
            args.append(value)
        return FUNCS[tokens[0]](*args)
    value, pos = operand(0)
    assert pos == len(tokens), f"trailing tokens in {tokens}"
    return value


def _run(nodes, ctx, dot, out):
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "expr":
            m = re.match(r"(\$\w+)\s*(:?=)\s*(.*)", node[1], re.S)
            if m:
                value = _eval(_split(m.group(3)), ctx, dot)
                if m.group(2) == ":=":
                    ctx.scopes[-1][m.group(1)] = value
                else:
                    ctx.assign(m.group(1), value)
            else:
                value = _eval(_split(node[1]), ctx, dot)
                out.append("" if value is None else str(value))
        elif kind == "if":
            for expr, body in node[1]:
                if expr is None or _truthy(_eval(_split(expr), ctx, dot)):
                    ctx.scopes.append({})
                    _run(body, ctx, dot, out)
                    ctx.scopes.pop()
                    break
        elif kind == "range":
            (expr, body), *rest = node[1]
            items = _eval(_split(expr), ctx, dot) or []
            for item in items:
                ctx.scopes.append({})
                _run(body, ctx, item, out)
                ctx.scopes.pop()
            if not items and rest:
                _run(rest[0][1], ctx, dot, out)


def render(template: str, data: dict) -> str:
    nodes, _, closing = _parse(_lex(template))
    assert closing is None, f"unbalanced {{{{ {closing} }}}}"
    out = []
    _run(nodes, _Ctx(data), data, out)
    return "".join(out)
