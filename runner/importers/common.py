"""What both importers share: the translation record (config built so far, keys not mapped and why,
notes), value coercion, path handling, the YAML output and its validation."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import UserError

# Order of the sections in the written config: the order a reader looks for them.
SECTION_ORDER = ["name", "model", "adapter", "quantization", "datasets", "eval_datasets", "val_size", "data",
                 "template", "sequence", "special_tokens", "training", "distributed", "tracking", "output"]
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Unmapped:
    key: str
    value: object
    reason: str


@dataclass
class Translation:
    """The runner config built from another tool's file, and everything that did not carry over."""

    tool: str
    source: Path
    config: dict = field(default_factory=dict)
    unmapped: list = field(default_factory=list)  # Unmapped
    notes: list = field(default_factory=list)  # (key, text): mapped, but worth a reader's attention

    def set(self, dotted: str, value) -> None:
        node = self.config
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def get(self, dotted: str, default=None):
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def skip(self, key: str, value, reason: str) -> None:
        self.unmapped.append(Unmapped(key, value, reason))

    def note(self, key: str, text: str) -> None:
        self.notes.append((key, text))

    def unmapped_keys(self) -> list[str]:
        return [u.key for u in self.unmapped]


def is_unset(value) -> bool:
    """Both tools treat an empty key (`lora_r:`) as not given."""
    return value is None or value == "" or value == [] or value == {}


def as_number(value, key: str, tr: Translation, integer: bool = False):
    """A number, also from the strings PyYAML's YAML 1.1 leaves `2e-5` as. None when not a number."""
    if isinstance(value, bool):
        tr.skip(key, value, "expected a number, got a boolean")
        return None
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value)
    if isinstance(value, (int, float)):
        if integer:
            if float(value) != int(value):
                tr.skip(key, value, "expected a whole number")
                return None
            return int(value)
        return value
    tr.skip(key, value, "expected a number")
    return None


def as_bool(value, key: str, tr: Translation):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    tr.skip(key, value, "expected true or false")
    return None


def split_list(value) -> list[str]:
    """LLaMA-Factory writes lists as `a,b,c`; both tools also accept YAML lists."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [str(value)]


def looks_like_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and not text.startswith((".", "/", "~"))


def locate(path_text: str, bases: list[Path]) -> Path | None:
    """The first existing file or folder `path_text` names, tried against each base in turn."""
    expanded = Path(os.path.expanduser(path_text))
    if expanded.is_absolute():
        return expanded if expanded.exists() else None
    for base in bases:
        candidate = (base / expanded).resolve()
        if candidate.exists():
            return candidate
    return None


def relative_to_output(path: Path, out_dir: Path) -> str:
    """Paths in a runner config are relative to the config file; keep them relative when we can."""
    try:
        return os.path.relpath(path, out_dir)
    except ValueError:  # another drive on Windows
        return str(path)


def ordered(config: dict) -> dict:
    out = {k: config[k] for k in SECTION_ORDER if k in config}
    out.update({k: v for k, v in config.items() if k not in out})
    return out


def render(tr: Translation, command: str) -> str:
    """The runner YAML: a header naming the source, the config, then every key left behind."""
    import yaml

    header = [f"# Imported from the {tr.tool} config {tr.source} by `{command}`.",
              "# Review the keys listed at the end: they had no runner equivalent and were not carried over.",
              "# yaml-language-server: $schema=https://runner.dev/schemas/config.schema.json"]
    body = yaml.safe_dump(ordered(tr.config), sort_keys=False, default_flow_style=False, allow_unicode=True,
                          width=110)
    lines = header + [body.rstrip("\n"), ""]
    lines += comment_block(tr)
    return "\n".join(lines).rstrip("\n") + "\n"


def _short(value) -> str:
    text = repr(value) if not isinstance(value, str) else value
    text = " ".join(text.split())
    return text if len(text) <= 70 else text[:67] + "..."


def comment_block(tr: Translation) -> list[str]:
    lines = []
    if tr.unmapped:
        lines.append(f"# Not mapped ({len(tr.unmapped)} key{'s' if len(tr.unmapped) != 1 else ''}):")
        lines += [f"#   {u.key}: {_short(u.value)}  -- {u.reason}" for u in tr.unmapped]
    else:
        lines.append("# Not mapped: none; every key was translated.")
    if tr.notes:
        lines.append("# Notes:")
        lines += [f"#   {key}: {text}" for key, text in tr.notes]
    return lines


def report_text(tr: Translation) -> str:
    """The stderr report: the same facts as the trailing comments, without the comment marks."""
    return "\n".join(line[2:] if line.startswith("# ") else line[1:] for line in comment_block(tr))


def problems(config: dict) -> tuple[list[str], list[str]]:
    """(errors, warnings) a runner config has: runner's lint when present, else schema + semantic checks."""
    from runner import checks, schema

    where = lambda path: ".".join(map(str, path)) or "(top level)"  # noqa: E731 - no file yet
    errors = [str(e) for e in schema.validate(config, where)]
    if errors:
        return errors, []
    found = checks.check(schema.fill_defaults(config), config, where)
    return [str(e) for e in found.errors], [str(w) for w in found.warnings]


def require(condition: bool, message: str, where: str, hint: str | None = None) -> None:
    if not condition:
        raise UserError(message, where=where, hint=hint)
