"""`runner schema`: print the config JSON Schema; `runner schema --docs FILE` writes the reference page
(docs/config.md), generated from the schema so it cannot drift."""

from __future__ import annotations

import json

from runner.config.schema import SCHEMA_PATH, _object_branch, _range, load_schema


def add_arguments(p) -> None:
    p.add_argument("--docs", metavar="FILE", help="write the Markdown key reference to FILE (docs/config.md)")
    p.add_argument("--sweep", action="store_true", help="the sweep file schema instead")


def run(args) -> int:
    if args.docs:
        with open(args.docs, "w", encoding="utf-8") as f:
            f.write(config_reference())
        print(f"wrote {args.docs}")
        return 0
    if args.sweep:
        print(json.dumps(load_schema("sweep"), indent=2))
    else:
        print(SCHEMA_PATH.read_text(), end="")
    return 0


def _type(node: dict) -> str:
    if "enum" in node:
        return " \\| ".join(json.dumps(v) for v in node["enum"])
    if "const" in node:
        return json.dumps(node["const"])
    if "oneOf" in node:
        return " or ".join(_type(b) for b in node["oneOf"])
    t = node.get("type", "any")
    if t == "array" and "items" in node:
        inner = node["items"]
        return f"list of {'objects' if 'properties' in inner else _type(inner)}"
    return " or ".join(t) if isinstance(t, list) else t


def _rows(node: dict, prefix: str, out: list) -> None:
    obj = _object_branch(node)
    if not obj:
        return
    required = set(obj.get("required", []))
    for key, sub in obj.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        default = "required" if key in required else (json.dumps(sub["default"]) if "default" in sub else "")
        desc = sub.get("description", "").replace("|", "\\|").replace("\n", " ")
        bounds = _range(sub)
        if bounds:
            desc += f" Range: {bounds}."
        aliases = sub.get("x-aliases")
        if aliases:
            desc += f" (other tools: {', '.join(aliases)})"
        if sub.get("x-secret"):
            desc += " **Secret.**"
        out.append(f"| `{path}` | {_type(sub)} | {default.replace('|', chr(92) + '|')} | {desc} |")
        if _object_branch(sub):
            _rows(sub, path, out)
        elif sub.get("type") == "array" and "properties" in sub.get("items", {}):
            _rows(sub["items"], f"{path}[]", out)


def config_reference() -> str:
    schema = load_schema()
    out = ["# Config reference", "",
           "Generated from `runner/schemas/config.schema.json` by `runner schema --docs docs/config.md`;",
           "a test fails when this page is stale. Every omitted key takes its default. Paths of inputs",
           "(datasets, extends, template files, local models) are relative to the config file; `output.dir`",
           "and `data.cache_dir` are relative to the working directory.", "",
           "| key | type | default | description |", "| --- | --- | --- | --- |"]
    _rows(schema, "", out)
    return "\n".join(out) + "\n"
