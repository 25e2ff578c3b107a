"""`runner schema`: print the config JSON Schema; `runner schema --docs FILE` writes the reference."""

from __future__ import annotations

import json

from runner.config.schema import SCHEMA_PATH, load_schema


def add_arguments(p) -> None:
    p.add_argument("--docs", metavar="FILE", help="write the Markdown key reference to FILE (docs/config.md)")
    p.add_argument("--sweep", action="store_true", help="the sweep file schema instead")


def run(args) -> int:
    if args.docs:
        from runner.config.docs import config_reference
        with open(args.docs, "w", encoding="utf-8") as f:
            f.write(config_reference())
        print(f"wrote {args.docs}")
        return 0
    if args.sweep:
        print(json.dumps(load_schema("sweep"), indent=2))
    else:
        print(SCHEMA_PATH.read_text(), end="")
    return 0
