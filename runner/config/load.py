"""Load a config file: YAML (see yamlsafe), `extends:` bases, `${env:NAME}` values and dotted
command-line overrides. The result is raw data plus the source position of every key; validation
and defaults come next (runner.config.schema)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from runner.config import schema
from runner.errors import ConfigErrors, UserError
from runner.config.yamlsafe import load_yaml, read_bounded, scalar, special_kind

COMMAND_LINE = "<command line>"
# org/name on the Hugging Face hub (not a local path)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Loaded:
    """A config as written: merged data, positions[(key, ...)] = "file:line:col", the files read."""

    path: Path
    data: dict
    positions: dict = field(default_factory=dict)
    files: list = field(default_factory=list)
    env_paths: set = field(default_factory=set)  # keys whose value came from the environment

    def where(self, path: tuple) -> str:
        """The closest known position of a key path (the key itself, else its nearest parent)."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.positions:
                return self.positions[path[:end]]
        return str(self.path)


def _display(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def _merge(base: dict, top: dict, base_pos: dict, top_pos: dict, prefix: tuple = ()) -> dict:
    """Deep merge: mappings merge key by key, everything else (lists included) is replaced."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, base_pos, top_pos, prefix + (key,))
        else:
            for p in [p for p in base_pos if p[: len(prefix) + 1] == prefix + (key,)]:
                del base_pos[p]
            out[key] = value
    return out


EXTENDS_ROOT_ENV = "RUNNER_EXTENDS_ROOT"


def _extends_root(top: Path) -> Path:
    """Where `extends:` may reach: the top-level config's folder, or what RUNNER_EXTENDS_ROOT names.
    A config cannot widen this itself: a config from elsewhere must not read arbitrary files."""
    return Path(os.environ.get(EXTENDS_ROOT_ENV) or top.parent).expanduser().resolve()


def _read_file(path: Path, chain: tuple, root: Path | None = None) -> tuple[dict, dict, list]:
    """One file with its bases merged under it. `chain` is the extends stack, for cycle errors."""
    root = root or _extends_root(path)
    source = _display(path)
    if path in chain:
        cycle = " -> ".join(_display(p) for p in chain + (path,))
        raise UserError(f"extends cycle: {cycle}", where=source, hint="remove one of the extends")
    located = load_yaml(read_bounded(path, source), source)
    data, positions = located.value, located.positions
    if not isinstance(data, dict):
        raise UserError(f"a config is a mapping of sections, got a {type(data).__name__}", where=f"{source}:1:1",
                        hint="start with `model:` and `datasets:`")
    _rebase_paths(data, path.parent)
    files = [str(path)]
    bases = data.pop("extends", None)
    if bases is None:
        return data, positions, files
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise UserError("extends must be a file path or a list of them", where=positions.get(("extends",), source))
    merged, merged_pos = {}, {}
    for i, base in enumerate(bases):
        base_path = (path.parent / os.path.expanduser(base)).resolve()
        where = positions.get(("extends", i), positions.get(("extends",), source))
        if base_path in chain + (path,):
            cycle = " -> ".join(_display(p) for p in chain + (path, base_path))
            raise UserError(f"extends cycle: {cycle}", where=where, hint="remove one of the extends")
        if not base_path.is_relative_to(root):
            raise UserError(f"extends: {base} resolves to {base_path}, outside {root}", where=where,
                            hint=f"keep bases beside the config, or allow a wider folder explicitly with "
                                 f"{EXTENDS_ROOT_ENV}=/path/to/configs (symlinks are followed before this check)")
        if not base_path.exists():
            raise UserError(f"extends: base config not found: {base}", where=where,
                            hint="paths in extends are relative to the file that names them")
        kind = special_kind(base_path)
        if kind:  # a FIFO would block the read forever, /dev/zero never ends
            raise UserError(f"extends: {base} is {kind}, not a config file", where=where,
                            hint="extends names regular YAML files only")
        b_data, b_pos, b_files = _read_file(base_path, chain + (path,), root)
        merged = _merge(merged, b_data, merged_pos, b_pos)
        merged_pos.update(b_pos)
        files += b_files
    positions.pop(("extends",), None)
    merged = _merge(merged, data, merged_pos, positions)
    merged_pos.update(positions)
    return merged, merged_pos, files


def _rebase_paths(data: dict, directory: Path) -> None:
    """Make the file paths a config file writes relative to that file, so a base config's datasets
    resolve beside the base, wherever the including file lives. Hub ids (org/name, not on disk) and
    values still holding ${env:...} are left alone."""

    def visit(node, path, tasks: bool):
        if not path or not isinstance(node, (dict, list)):
            return  # a wrong shape is the schema's to report, with its position
        head, rest = path[0], path[1:]
        targets = range(len(node)) if head == "*" and isinstance(node, list) else [head]
        for t in targets:
            if isinstance(node, dict) and t not in node or isinstance(node, list) and not isinstance(t, int):
                continue
            if rest:
                visit(node[t], rest, tasks)
            elif isinstance(node[t], str) and not tasks:
                node[t] = _rebased(node[t], directory)
            elif isinstance(node[t], str) and looks_like_task_path(node[t]) and "${" not in node[t]:
                node[t] = os.path.normpath(directory / os.path.expanduser(node[t]))  # never a hub id

    for keys in schema.path_keys():
        # `x-path: task`: a benchmark name (mmlu) or a task file; only the file is a path.
        mark = schema.subschema(tuple(0 if k == "*" else k for k in keys)).get("x-path")
        visit(data, keys, mark == "task")


def looks_like_task_path(value: str) -> bool:
    """An lm-eval task entry that names a file or folder rather than a task: a YAML file name, or
    anything with a folder separator (lm-eval's task names have none); `./name` for a folder."""
    return value.endswith((".yaml", ".yml")) or "/" in value or "\\" in value or value.startswith(("~", "."))


def _rebased(value: str, directory: Path) -> str:
    if "${" in value or value.startswith("package:") or os.path.isabs(os.path.expanduser(value)):
        return value
    candidate = directory / value
    if candidate.exists() or not HUB_ID.match(value):
        return str(candidate.resolve()) if candidate.exists() else os.path.normpath(str(candidate))
    return value


def _interpolate(value, path: tuple, loaded: Loaded, errors: list):
    if isinstance(value, dict):
        return {k: _interpolate(v, path + (k,), loaded, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, path + (i,), loaded, errors) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match):
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        errors.append(UserError(f"{_dotted(path)}: environment variable {name} is not set",
                                where=loaded.where(path),
                                hint=f"export {name}=... or write ${{env:{name}:-default}}"))
        return ""

    loaded.env_paths.add(path)
    # Only substitution: the value is never evaluated, so nothing in the environment can run.
    return _ENV.sub(replace, value)


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _key_parts(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in key.strip().split("."))


def _shown_override(text: str) -> str:
    """An override as errors may quote it. Its value is shown only for a key the schema knows and
    does not mark secret: an unknown key may be a misspelt `model.token`, and an argument that is
    not KEY=VALUE may be a token typed after its key (`model.token hf_...`)."""
    key, sep, _ = text.partition("=")
    match = re.match(r"[A-Za-z_][\w.-]*", text)
    if not sep:
        if match and schema.subschema(_key_parts(match.group(0).rstrip("."))) is not None:
            return match.group(0) + ("..." if len(match.group(0)) < len(text) else "")
        return ""
    parts = _key_parts(key)
    if schema.subschema(parts) is None or schema.is_secret(parts):
        return f"{key.strip()}=<not shown>"
    return text


def _apply_override(loaded: Loaded, text: str) -> None:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        shown = _shown_override(text)
        raise UserError(f"override {shown!r} is not KEY=VALUE" if shown else
                        "an override is not KEY=VALUE (its text is not printed: it may be a secret)", where=COMMAND_LINE,
                        hint="e.g. training.learning_rate=1e-4 datasets.0.num_samples=100 (the value of a "
                             "key that is unknown or secret is never printed)")
    parts = _key_parts(key)
    value = scalar(raw)
    # Typed by the schema: a string key keeps the text as written (`name=007` stays "007").
    types = schema.types_at(parts)
    kind = schema.type_name(value)
    if value is not None and kind != "string" and "string" in types and kind not in types \
            and not (kind == "integer" and "number" in types):
        value = raw
    node = loaded.data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list) and isinstance(part, int):
            if part >= len(node):
                raise UserError(f"override {key}: {_dotted(parts[:i])} has {len(node)} items, no item {part}",
                                where=COMMAND_LINE)
            node = node[part]
        elif isinstance(node, dict):
            node = node.setdefault(part, {}) if not isinstance(node.get(part), (dict, list)) else node[part]
        else:
            raise UserError(f"override {key}: {_dotted(parts[: i + 1])} is not a section", where=COMMAND_LINE)
    last = parts[-1]
    if isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise UserError(f"override {key}: cannot set {_dotted(parts)}", where=COMMAND_LINE)
    for p in [p for p in loaded.positions if p[: len(parts)] == parts]:
        del loaded.positions[p]
    loaded.positions[parts] = f"{COMMAND_LINE} ({_shown_override(text)})"


def load_raw(path: str | os.PathLike) -> Loaded:
    """A config with its bases merged, as written: `${env:...}` values are kept unresolved (for
    writing a config back out, e.g. a sweep's best trial), no overrides applied."""
    path = Path(path).expanduser().resolve()
    data, positions, files = _read_file(path, ())
    return Loaded(path=path, data=data, positions=positions, files=files)


def load(path: str | os.PathLike, overrides=()) -> Loaded:
    """Read a config with its bases, environment values and overrides. Raises UserError."""
    path = Path(path).expanduser().resolve()
    data, positions, files = _read_file(path, ())
    loaded = Loaded(path=path, data=data, positions=positions, files=files)
    errors: list = []
    loaded.data = _interpolate(loaded.data, (), loaded, errors)
    if errors:
        raise ConfigErrors(errors)
    for text in overrides:
        _apply_override(loaded, text)
    return loaded
