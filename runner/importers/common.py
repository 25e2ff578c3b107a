"""What both importers share: the translation record (config built so far, keys not mapped and why,
notes), value coercion, path handling, the YAML output and its validation."""

from __future__ import annotations

import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from runner.config.load import HUB_ID
from runner.errors import UserError

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


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
    idle: list = field(default_factory=list)  # keys left empty or switched off: nothing to carry over

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


def drop_lora_keys(tr: Translation, names: dict) -> None:
    """LoRA settings of a run that is not LoRA are reported (under the source's key names from
    `names`, runner key -> source key) instead of left to fail the lint."""
    kind = tr.get("adapter.kind")
    adapter = tr.config.get("adapter", {})
    if kind == "lora":
        return
    for key in ("r", "alpha", "dropout", "target_modules", "dora", "rslora", "init", "loraplus_lr_ratio",
                "loraplus_lr_embedding", "modules_to_save"):
        if key in adapter and not (key == "modules_to_save" and kind == "freeze"):
            tr.skip(names.get(key, f"adapter.{key}"), adapter.pop(key), f"a LoRA setting, but the run is {kind} fine-tuning")


def fsdp_qlora_storage(tr: Translation) -> None:
    """FSDP shards QLoRA's 4-bit weights, so their storage dtype must equal the model dtype; both tools
    set that on their own, runner wants it written down."""
    if tr.get("distributed.backend") != "fsdp" or tr.get("quantization.bits") != 4:
        return
    dtype = tr.get("model.dtype")
    if dtype in (None, "auto"):
        dtype = "float16" if tr.get("training.precision") == "fp16" else "bfloat16"
    tr.set("model.dtype", dtype)
    if tr.get("quantization.quant_storage") not in (None, dtype):
        tr.note("quantization.quant_storage", f"changed to {dtype} to match model.dtype under FSDP")
    tr.set("quantization.quant_storage", dtype)
    tr.note("model.dtype", f"{dtype}: FSDP with 4-bit weights stores them in the model dtype")


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
    return bool(HUB_ID.match(text)) and not text.startswith((".", "/", "~"))


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


def ordered(config, node: dict | None = None):
    """Sections and keys in the schema's order (model.path first, ...), so the output reads like a recipe."""
    from runner.config.schema import _object_branch, load_schema

    node = node if node is not None else load_schema()
    if isinstance(config, list) and "items" in node:
        return [ordered(item, node["items"]) for item in config]
    obj = _object_branch(node) if isinstance(config, dict) else None
    if not obj:
        return config
    props = obj.get("properties", {})
    keys = [k for k in props if k in config] + [k for k in config if k not in props]
    return {k: ordered(config[k], props.get(k, {})) for k in keys}


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
    if tr.idle:
        lines.append("# Empty or switched off in the source (nothing to carry over):")
        lines += textwrap.wrap(", ".join(tr.idle), width=100, initial_indent="#   ", subsequent_indent="#   ")
    return lines


def report_text(tr: Translation) -> str:
    """The stderr report: the same facts as the trailing comments, without the comment marks."""
    return "\n".join(line[2:] if line.startswith("# ") else line[1:] for line in comment_block(tr))


def problems(text: str, out_dir: Path, label: str = "imported config") -> tuple[list[str], list[str]]:
    """(errors, warnings) of the written config as runner reads it: `runner lint` when it exists, else
    the schema and the semantic checks. The text is checked from a file in out_dir so that relative
    paths resolve as they will for the user."""
    import tempfile

    try:
        handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=".runner-import-", dir=out_dir,
                                             delete=False, encoding="utf-8")
    except OSError:
        return _check_data(text), []
    path = Path(handle.name)
    try:
        with handle:
            handle.write(text)
        try:
            from runner.plan.lint import lint_files
        except ImportError:
            errors, warnings = _check_file(path)
        else:
            result = lint_files([path])[0]
            errors, warnings = [str(e) for e in result.errors], [str(w) for w in result.warnings]
    finally:
        path.unlink(missing_ok=True)
    # Messages name the temporary file; name the file the user will have instead.
    temp = re.compile(r"\S*" + re.escape(path.name))
    return [temp.sub(label, m) for m in errors], [temp.sub(label, m) for m in warnings]


def _check_file(path: Path) -> tuple[list[str], list[str]]:
    from runner.config import checks
    from runner.config import load as config
    from runner.config import schema

    try:
        loaded = config.load(path)
    except UserError as err:
        return [str(err)], []
    errors = [str(e) for e in schema.validate(loaded.data, lambda p: ".".join(map(str, p)) or "(top level)")]
    if errors:
        return errors, []
    found = checks.check(schema.fill_defaults(loaded.data), loaded.data, lambda p: ".".join(map(str, p)))
    return [str(e) for e in found.errors], [str(w) for w in found.warnings]


def _check_data(text: str) -> list[str]:
    from runner.config import schema
    from runner.config.yamlsafe import load_yaml

    try:
        data = load_yaml(text, "<imported>").value
    except UserError as err:
        return [str(err)]
    return [str(e) for e in schema.validate(data, lambda p: ".".join(map(str, p)) or "(top level)")]


def require(condition: bool, message: str, where: str, hint: str | None = None) -> None:
    if not condition:
        raise UserError(message, where=where, hint=hint)


def columns_for(fmt: str, wanted: dict) -> dict:
    """`wanted` is {format field: file column}; keep the entries that differ from what runner's data
    pipeline reads by default (runner.data.formats.FIELDS), so the output stays short."""
    from runner.data.formats import FIELDS

    defaults = FIELDS.get(fmt, {})
    return {k: v for k, v in wanted.items() if v and defaults.get(k) != v}


def standard_role(source: str, target: str) -> bool:
    """Whether runner already reads the file role `source` as `target` without a `roles:` entry."""
    from runner.data.formats import DEFAULT_ROLES

    return DEFAULT_ROLES.get(source) == target


def dataset_path(path_text: str, bases: list[Path], out_dir: Path, tr: Translation, where: str) -> dict:
    """`path` (and `type: hub` for a hub id) of a runner dataset from a path as another tool wrote it."""
    found = locate(path_text, bases)
    if found is not None:
        return {"path": relative_to_output(found, out_dir)}
    if looks_like_hub_id(path_text):
        return {"path": path_text, "type": "hub"}
    tr.note(where, f"{path_text} was not found next to the source config or in the current directory; kept as written")
    return {"path": path_text}


def coerce(value, kind, key: str, tr: "Translation"):
    """A source value as the type its runner key takes (None when it cannot be, reported on tr)."""
    if kind is bool:
        return as_bool(value, key, tr)
    if kind in (int, float):
        return as_number(value, key, tr, integer=kind is int)
    if kind is list:
        return split_list(value)
    return str(value)


def pop_key(keys: dict, name: str, tr: "Translation"):
    """The value of a key handled by special code (None when empty, which is recorded as idle)."""
    if name not in keys:
        return None
    value = keys.pop(name)
    if is_unset(value):
        tr.idle.append(name)
        return None
    return value


def set_direct(table: dict, key: str, value, tr: "Translation") -> None:
    """A key with a one-to-one runner key: its value, typed, at the target path."""
    target, kind = table[key]
    value = coerce(value, kind, key, tr)
    if value is not None:
        tr.set(target, value)
