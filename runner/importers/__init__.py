"""`runner import axolotl FILE` and `runner import llamafactory FILE [--dataset-info F]`: another tool's
YAML -> a runner config, printed or written with -o. Keys that do not carry over are listed on stderr
and as comments at the end of the config, each with the reason; nothing is dropped silently."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError
from runner.importers.common import Translation, problems, render, report_text

TOOLS = ("axolotl", "llamafactory")


@dataclass
class ImportResult:
    translation: Translation
    text: str  # the runner YAML, header and trailing comments included
    errors: list  # why the result would not lint (empty when it lints clean)
    warnings: list


def _read_yaml(path: Path) -> dict:
    import yaml

    from runner.config.yamlsafe import read_bounded

    try:
        text = read_bounded(path, str(path), "file").decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"cannot read {path}: {err}") from None
    try:
        # Both tools read their configs with PyYAML / OmegaConf (YAML 1.1); read them the same way.
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"not valid YAML: {err}", where=str(path)) from None
    if not isinstance(data, dict):
        raise UserError("expected a mapping of config keys", where=str(path))
    return data


def import_config(tool: str, source, out_dir=None, dataset_info=None, command: str | None = None,
                  label: str = "imported config") -> ImportResult:
    """Translate `source` (a file of `tool`) into runner YAML whose relative paths suit `out_dir`."""
    source = Path(source).expanduser().resolve()
    out_dir = Path(out_dir).resolve() if out_dir else Path.cwd()
    data = _read_yaml(source)
    if tool == "axolotl":
        from runner.importers import axolotl

        tr = axolotl.translate(data, source, out_dir)
    elif tool == "llamafactory":
        from runner.importers import llamafactory

        tr = llamafactory.translate(data, source, out_dir, dataset_info=dataset_info)
    else:
        raise UserError(f"unknown tool {tool!r}", hint=f"one of: {', '.join(TOOLS)}")
    text = render(tr, command or f"runner import {tool} {source.name}")
    errors, warnings = problems(text, out_dir, label)
    return ImportResult(tr, text, errors, warnings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("tool", choices=TOOLS, help="the tool that wrote FILE")
    parser.add_argument("file", help="the tool's YAML config")
    parser.add_argument("--dataset-info", metavar="F",
                        help="LLaMA-Factory: the dataset_info.json describing the config's datasets "
                             "(default: dataset_dir/dataset_info.json)")
    parser.add_argument("-o", "--output", metavar="OUT", help="write the runner config here instead of printing it")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    if args.dataset_info and args.tool != "llamafactory":
        raise UserError("--dataset-info is for LLaMA-Factory configs")
    out = Path(args.output).expanduser().resolve() if args.output else None
    if out and out.exists() and not args.force:
        raise UserError(f"{args.output} exists", hint="pass --force to replace it, or choose another -o")
    command = f"runner import {args.tool} {args.file}"
    result = import_config(args.tool, args.file, out.parent if out else None, args.dataset_info, command,
                           args.output or "imported config")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result.text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(result.text)
    print(report_text(result.translation), file=sys.stderr)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.errors:
        print("The imported config does not lint clean:", file=sys.stderr)
        for error in result.errors:
            print(f"  {error}", file=sys.stderr)
        print("  hint: fix these keys by hand (the config above is what could be translated)", file=sys.stderr)
        return 1
    return 0
