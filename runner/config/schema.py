"""The config schema (runner/schemas/config.schema.json) is the single source of truth for every key.
This module reads it: validation with errors for people, defaults, key types, secret keys."""

from __future__ import annotations

import difflib
import functools
import json
import math
from pathlib import Path

from runner.errors import UserError

SCHEMA_PATH = Path(__file__).parents[1] / "schemas" / "config.schema.json"


def load_schema(name: str = "config") -> dict:
    return _load_schema(name)  # one cached object per schema, however the name is passed


@functools.lru_cache(maxsize=None)
def _load_schema(name: str) -> dict:
    return json.loads((Path(__file__).parents[1] / "schemas" / f"{name}.schema.json").read_text())


def stages() -> dict:
    """training.stage's table (`x-stages`): for each stage, the dataset formats it trains on and the
    rows the pipeline makes for it (sequence, preference, kto). Lint, the resolver and the data
    pipeline read it; the stage's execution lives in runner/train/stages/<name>.py."""
    return load_schema()["properties"]["training"]["properties"]["stage"]["x-stages"]


def _object_branch(node: dict) -> dict | None:
    """The object schema inside `node`, looking through oneOf/anyOf (e.g. wandb: null | object)."""
    if node.get("type") == "object" or "properties" in node:
        return node
    for branch in node.get("oneOf", []) + node.get("anyOf", []):
        found = _object_branch(branch)
        if found:
            return found
    return None


def subschema(path: tuple, root: dict | None = None) -> dict | None:
    """The schema of a key path such as ("datasets", 0, "format"); None if no such key."""
    node = root or load_schema()
    for part in path:
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
            items = node.get("items")
            if items is None:
                return None
            node = items
            continue
        obj = _object_branch(node)
        if obj is None or part not in obj.get("properties", {}):
            return None
        node = obj["properties"][part]
    return node


def types_at(path: tuple) -> set:
    """JSON types a key accepts ({"string"}, {"number", "null"}, ...); empty if unknown."""
    node = subschema(path)
    if node is None:
        return set()
    found: set = set()

    def collect(n):
        t = n.get("type")
        if isinstance(t, list):
            found.update(t)
        elif t:
            found.add(t)
        if "const" in n:
            found.add(type_name(n["const"]))
        for v in n.get("enum", []):
            found.add(type_name(v))
        for b in n.get("oneOf", []) + n.get("anyOf", []):
            collect(b)

    collect(node)
    return found


def type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def secret_paths(node: dict | None = None, prefix: tuple = ()) -> list[tuple]:
    """Key paths marked `x-secret` (never printed, hashed or written). Array items appear as '*'."""
    node = node or load_schema()
    out = []
    if node.get("x-secret"):
        out.append(prefix)
    obj = _object_branch(node)
    if obj:
        for key, sub in obj.get("properties", {}).items():
            out += secret_paths(sub, prefix + (key,))
    if "items" in node:
        out += secret_paths(node["items"], prefix + ("*",))
    return out


@functools.lru_cache(maxsize=None)
def _secret_patterns() -> tuple:
    return tuple(secret_paths())


def is_secret(path: tuple) -> bool:
    """Whether a key path such as ("model", "token") holds a secret (list indices match '*')."""
    for pattern in _secret_patterns():
        if len(pattern) == len(path) and all(
                p == q or (p == "*" and isinstance(q, int)) for p, q in zip(pattern, path)):
            return True
    return False


def path_keys(node: dict | None = None, prefix: tuple = ()) -> list[tuple]:
    """Key paths marked `x-path`: file locations, relative to the file that writes them."""
    node = node or load_schema()
    out = [prefix] if node.get("x-path") else []
    obj = _object_branch(node)
    if obj:
        for key, sub in obj.get("properties", {}).items():
            out += path_keys(sub, prefix + (key,))
    if "items" in node:
        out += path_keys(node["items"], prefix + ("*",))
    return out


def fill_defaults(value, node: dict | None = None):
    """A copy of `value` with every omitted key set to its schema default (sections recursively)."""
    node = node or load_schema()
    obj = _object_branch(node)
    if isinstance(value, dict) and obj:
        out = dict(value)
        for key, sub in obj.get("properties", {}).items():
            if key in out:
                out[key] = fill_defaults(out[key], sub)
            elif "default" in sub:
                out[key] = fill_defaults(json.loads(json.dumps(sub["default"])), sub)
            elif _object_branch(sub) is sub and sub.get("type") == "object":
                out[key] = fill_defaults({}, sub)
        return out
    if isinstance(value, list) and "items" in node:
        return [fill_defaults(v, node["items"]) for v in value]
    return value


def _aliases(obj: dict) -> dict:
    """Other tools' names for keys of one section: {"lora_rank": "r", "num_epochs": "epochs", ...}."""
    out = {}
    for key, sub in obj.get("properties", {}).items():
        for alias in sub.get("x-aliases", []):
            out.setdefault(alias, key)
    return out


def suggest(word: str, choices, aliases: dict | None = None) -> str | None:
    """A did-you-mean for a misspelt key or value."""
    if aliases and word in aliases and aliases[word] != word:
        return aliases[word]
    text = [str(c) for c in choices]
    stripped = str(word).strip().lower().replace("-", "_")
    for c in text:
        if c.lower().replace("-", "_") == stripped:
            return c
    match = difflib.get_close_matches(str(word), text, n=1, cutoff=0.6)
    return match[0] if match else None


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _shown(value, path: tuple) -> str:
    """A value as an error may print it: a secret (by its key path, or a key of that name in a
    mapping of the wrong shape) is replaced by a placeholder, never echoed."""
    return "<secret, not shown>" if is_secret(path) else _describe(_masked(value, path))


def _masked(value, path: tuple):
    """`value` with what lies under a secret key path, or a key named like one, replaced."""
    leaf_names = {p[-1] for p in _secret_patterns() if p}
    if isinstance(value, dict):
        return {k: "<secret>" if (k in leaf_names or is_secret(path + (k,))) and v is not None
                else _masked(v, path + (k,)) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(x, path + (i,)) for i, x in enumerate(value)]
    return value


# YAML 1.1 booleans: YAML 1.2 (what runner reads) types them as strings.
YAML11_BOOLEANS = {"y", "yes", "n", "no", "on", "off"}
_NON_FINITE_WORDS = {"nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity", ".nan", ".inf", "-.inf"}


def _yaml11_hint(value) -> str | None:
    if isinstance(value, str) and value.lower() in YAML11_BOOLEANS:
        word = "true" if value.lower() in ("y", "yes", "on") else "false"
        return (f"runner reads YAML 1.2, where {value!r} is a string, not a boolean (YAML 1.1 tools such as "
                f"Axolotl read it as {word}): write {word}")
    return None


def _range(node: dict) -> str | None:
    """The bounds of a number key, e.g. "(0, 1]" or ">= 1", for hints."""
    low = ("(", node["exclusiveMinimum"]) if "exclusiveMinimum" in node else ("[", node.get("minimum"))
    high = (")", node["exclusiveMaximum"]) if "exclusiveMaximum" in node else ("]", node.get("maximum"))
    if low[1] is None and high[1] is None:
        return None
    if high[1] is None:
        return f"{'>' if low[0] == '(' else '>='} {low[1]}"
    if low[1] is None:
        return f"{'<' if high[0] == ')' else '<='} {high[1]}"
    return f"{low[0]}{low[1]}, {high[1]}{high[0]}"


def non_finite(data) -> list[tuple[tuple, float]]:
    """(key path, value) of every NaN or infinite number in `data`, whatever the key."""
    out, stack = [], [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            out.append((path, value))
        elif isinstance(value, dict):
            stack += [(path + (k,), v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(path + (i,), v) for i, v in enumerate(value)]
    return out


def _non_finite_error(path: tuple, value: float, where, root: dict) -> UserError:
    node = subschema(path, root) or {}
    bounds = _range(node)
    return UserError(f"{_dotted(path)}: {value} is not a finite number", where=where(path),
                     hint="numbers in a config must be finite (.nan, .inf and numbers beyond 1.8e308 are refused)"
                          + (f"; {_dotted(path)} takes {bounds}" if bounds else ""))


def _key_suggestion(key: str, path: tuple, allowed: list, obj: dict, node: dict) -> str | None:
    """Did-you-mean for an unknown key: another tool's name for a key of this section, the same key
    in another section (`learning_rate` at the top -> `training.learning_rate`), else a close spelling."""
    aliases = _aliases(obj)
    if key in aliases and aliases[key] != key:
        return repr(aliases[key])
    same = [c for c in allowed if c.lower().replace("-", "_") == str(key).strip().lower().replace("-", "_")]
    if same:
        return repr(same[0])
    if subschema(path) is node:  # a config key (not a sweep file's): look in the other sections
        from runner.config.foreign import elsewhere
        places = elsewhere(key, path)
        if places:
            quoted = [repr(p) for p in places]
            return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    close = suggest(key, allowed)
    return repr(close) if close else None


def _explain(err, where) -> list[UserError]:
    """One jsonschema error as UserErrors that say path, position, what was expected, did-you-mean."""
    path = tuple(err.absolute_path)
    kind = err.validator
    if kind == "additionalProperties":
        obj = _object_branch(err.schema) or err.schema
        allowed = list(obj.get("properties", {}))
        extra = [k for k in err.instance if k not in allowed]
        out = []
        for key in extra:
            hint = _key_suggestion(key, path, allowed, obj, err.schema)
            out.append(UserError(
                f"{_dotted(path + (key,))}: unknown key {key!r}" + (f"; did you mean {hint}?" if hint else ""),
                where=where(path + (key,)),
                hint=None if hint else f"keys here: {', '.join(allowed)}"))
        return out
    if kind == "enum" or kind == "const":
        choices = err.validator_value if kind == "enum" else [err.validator_value]
        hint = suggest(err.instance, choices) if isinstance(err.instance, str) and not is_secret(path) else None
        msg = f"{_dotted(path)}: {_shown(err.instance, path)} is not one of {', '.join(_describe(c) for c in choices)}"
        more = _yaml11_hint(err.instance) if (True in choices or False in choices) else None
        if more is None and subschema(path) is err.schema:  # a config key, not a sweep file's
            from runner.config.foreign import sibling_hint
            more = sibling_hint(path, err.instance)
        return [UserError(msg + (f"; did you mean {hint!r}?" if hint else ""), where=where(path), hint=more)]
    if kind == "type":
        want = err.validator_value if isinstance(err.validator_value, str) else " or ".join(err.validator_value)
        got = type_name(err.instance)
        hint = None
        if ("number" in want or "integer" in want) and isinstance(err.instance, str):
            hint = ("numbers in a config must be finite" if err.instance.strip().lower() in _NON_FINITE_WORDS
                    else "write the number without quotes (YAML 1.2: 2e-4 is a number)")
        if "boolean" in want:
            hint = _yaml11_hint(err.instance) or hint
        if want == "object":
            hint = f"{_dotted(path)} is a section: write its keys indented below it"
        return [UserError(f"{_dotted(path)}: expected {want}, got {got} {_shown(err.instance, path)}",
                          where=where(path), hint=hint)]
    if kind == "required":
        missing = [k for k in err.validator_value if k not in err.instance]
        return [UserError(f"{_dotted(path + (k,))}: required key {k!r} is missing", where=where(path))
                for k in missing]
    if kind in ("oneOf", "anyOf"):
        # Report the branch that got furthest, in the user's terms.
        # The branches whose type matched the value failed for a reason worth telling; the others
        # only say "not a string / not null".
        relevant = [e for e in (err.context or []) if e.validator not in ("type", "const")
                    or len(e.absolute_path) > len(err.absolute_path)]
        if relevant:
            out = []
            for e in relevant:
                out += _explain(e, where)
            return out
        shapes = []
        for b in err.validator_value:
            shapes.append(_describe(b["const"]) if "const" in b else b.get("type", "value"))
        return [UserError(f"{_dotted(path)}: {_shown(err.instance, path)} is not valid; expected {' or '.join(map(str, shapes))}",
                          where=where(path))]
    limits = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in limits:
        bounds = _range(err.schema)
        return [UserError(f"{_dotted(path)}: {_shown(err.instance, path)} must be {limits[kind]} {err.validator_value}",
                          where=where(path), hint=f"{_dotted(path)} takes {bounds}" if bounds else None)]
    if kind == "pattern":
        return [UserError(f"{_dotted(path)}: {_shown(err.instance, path)} does not match {err.validator_value}",
                          where=where(path), hint=(subschema(path) or {}).get("description"))]
    if kind == "maxLength":  # the value itself may be the problem: never print all of it
        return [UserError(f"{_dotted(path)}: {len(err.instance)} characters, at most {err.validator_value}",
                          where=where(path), hint=(subschema(path) or {}).get("description"))]
    if kind == "minItems":
        return [UserError(f"{_dotted(path)}: needs at least {err.validator_value} item(s)", where=where(path))]
    if is_secret(path) or _masked(err.instance, path) != err.instance:  # jsonschema's message quotes the value
        return [UserError(f"{_dotted(path)}: {_shown(err.instance, path)} is not valid ({kind})", where=where(path))]
    return [UserError(f"{_dotted(path)}: {err.message}", where=where(path))]


def validate(data, where, name: str = "config") -> list[UserError]:
    """All schema errors of `data`, ordered by position. `where(path)` gives "file:line:col"."""
    import jsonschema

    root = load_schema(name)
    validator = jsonschema.Draft202012Validator(root)
    # NaN passes every bound (each comparison is false) and inf passes every lower bound: refused
    # here for every key, known or not, before the schema's own checks.
    bad = dict(non_finite(data))
    errors: list[UserError] = [_non_finite_error(p, v, where, root) for p, v in bad.items()]
    seen = {str(e) for e in errors}
    for err in validator.iter_errors(data):
        if tuple(err.absolute_path) in bad:
            continue
        for e in _explain(err, where):
            if str(e) not in seen:
                seen.add(str(e))
                errors.append(e)
    return sorted(errors, key=_position_key)


def _position_key(e: UserError):
    """Errors in file order: "file:line:col" sorts by file, then line and column as numbers."""
    parts = (e.where or "").rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return (parts[0], int(parts[1]), int(parts[2]))
    return (e.where or "", 0, 0)
