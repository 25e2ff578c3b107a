"""The Configure page's backend: lint a YAML text exactly as `runner lint` would lint that file,
read its values (with `extends:` bases marked as inherited) for the form, copy a cookbook recipe
into the workspace, import another tool's file. Nothing here imports torch."""
from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

from runner.config.load import load
from runner.config.yamlsafe import load_yaml
from runner.errors import ConfigErrors, UserError
from runner.ui.workspace import Workspace, recipe_path

MAX_TEXT = 1024 * 1024


def check_text(text) -> str:
    if not isinstance(text, str):
        raise UserError("text: the YAML is required as a string")
    if len(text.encode()) > MAX_TEXT:
        raise UserError(f"the config is larger than {MAX_TEXT // 1024} KiB")
    return text


class Draft:
    """The editor's text as a hidden file beside where it will be saved (so relative paths and
    `extends:` resolve as they will), removed on exit; errors name the real file."""

    def __init__(self, ws: Workspace, target: str, text: str):
        self.target = ws.path(target, "path")
        if self.target.suffix not in (".yaml", ".yml"):
            raise UserError(f"path: {target} is not a .yaml file", hint="configs are .yaml files")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.target.parent / f".{self.target.stem}.{uuid.uuid4().hex[:8]}.ui-draft.yaml"
        self.text = check_text(text)

    def __enter__(self) -> Path:
        self.file.write_text(self.text, encoding="utf-8")
        return self.file

    def __exit__(self, *exc) -> None:
        self.file.unlink(missing_ok=True)

    def shown(self, text: str | None) -> str | None:
        if text is None:
            return None
        for form in {os.path.relpath(self.file), str(self.file), self.file.name}:
            text = text.replace(form, os.path.relpath(self.target) if form != self.file.name else self.target.name)
        return text


def _entry(draft: Draft, err: UserError, severity: str) -> dict:
    where = draft.shown(err.where)
    match = re.search(r":(\d+)(?::(\d+))?", where or "")
    line = f"{where}: {severity}: {err.message}" if where else f"{severity}: {err.message}"
    return {"severity": severity, "where": where, "message": draft.shown(err.message), "hint": draft.shown(err.hint),
            "line": int(match.group(1)) if match else None,
            "text": draft.shown(line + (f"\n  hint: {err.hint}" if err.hint else ""))}


def lint_text(ws: Workspace, target: str, text: str, deep: bool = False) -> dict:
    """`runner lint` (`--deep`) on the text as if saved at `target`: its messages, verbatim."""
    from runner.plan.lint import lint_file

    draft = Draft(ws, target, text)
    with draft as file:
        result = lint_file(os.path.relpath(file), deep=deep)
    problems = [_entry(draft, e, "error") for e in result.errors] + [_entry(draft, w, "warning")
                                                                     for w in result.warnings]
    return {"ok": result.ok, "problems": problems}


def read_values(ws: Workspace, target: str, text: str) -> dict:
    """The merged values for the form, dotted, and which of them a base file (`extends:`) set."""
    draft = Draft(ws, target, text)
    with draft as file:
        try:
            loaded = load(os.path.relpath(file))
        except ConfigErrors as err:
            return {"values": {}, "inherited": [], "error": draft.shown(str(err.errors[0]))}
        except UserError as err:
            return {"values": {}, "inherited": [], "error": draft.shown(str(err))}
        own = os.path.relpath(file)
    values, inherited = {}, []
    for path, where in loaded.positions.items():
        if not path or any(isinstance(k, int) for k in path):
            continue
        value = loaded.data
        for key in path:
            value = value[key]
        if isinstance(value, (dict, list)):
            continue
        dotted = ".".join(path)
        values[dotted] = value
        if not where.startswith(own + ":"):
            inherited.append({"key": dotted, "from": draft.shown(where)})
    return {"values": values, "inherited": inherited, "error": None}


def use_recipe(ws: Workspace, name: str) -> dict:
    """A cookbook recipe copied into the workspace as NAME.yaml (NAME-2.yaml, ... when taken), with
    the local files it names (datasets, `extends:` bases) copied beside it and its paths rewritten,
    so the copy is self-contained inside the workspace."""
    source = recipe_path(name)
    text = source.read_text(encoding="utf-8")
    target = ws.root / f"{name}.yaml"
    n = 2
    while target.exists():
        target, n = ws.root / f"{name}-{n}.yaml", n + 1
    text = _bring_files(ws, source, text)
    target.write_text(text, encoding="utf-8")
    return {"path": ws.rel(target), "text": text}


def _bring_files(ws: Workspace, source: Path, text: str) -> str:
    data = load_yaml(text, source.name).value
    paths = [d.get("path") for group in ("datasets", "eval_datasets") for d in (data.get(group) or [])
             if isinstance(d, dict)]
    bases = data.get("extends") or []
    for value in [*paths, *([bases] if isinstance(bases, str) else bases)]:
        if not isinstance(value, str) or os.path.isabs(value) or ":" in value:
            continue
        origin = (source.parent / value).resolve()
        if not origin.exists() or not (value.startswith("..") or Path(value).parts[0] == "base"):
            continue
        dest = ws.root / ("data" if origin.suffix not in (".yaml", ".yml") else "base") / origin.name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if origin.is_dir() else shutil.copy2)(origin, dest)
        if origin.suffix in (".yaml", ".yml"):
            dest.write_text(_bring_files(ws, origin, origin.read_text(encoding="utf-8")), encoding="utf-8")
        text = text.replace(value, ws.rel(dest) if dest.parent.name == "data" else f"base/{origin.name}")
    return text


def import_upload(ws: Workspace, tool: str, filename: str, text: str) -> dict:
    """Another tool's config, uploaded: `runner import` on it, its result for the editor."""
    from runner.importers import TOOLS, import_config

    if tool not in TOOLS:
        raise UserError(f"tool: {tool!r} is not one of {', '.join(TOOLS)}")
    name = Path(str(filename or "imported.yaml")).name  # an upload's name, never a path
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).stem) or "imported"
    _confine_references(ws, check_text(text))
    upload = ws.ui_dir("uploads") / f"{uuid.uuid4().hex[:8]}-{stem}.yaml"
    upload.write_text(text, encoding="utf-8")
    try:
        result = import_config(tool, str(upload), ws.root, None, f"runner import {tool} {name}", f"{stem}.yaml")
    finally:
        upload.unlink(missing_ok=True)
    return {"path": f"{stem}.yaml", "text": result.text, "errors": [str(e) for e in result.errors],
            "warnings": [str(w) for w in result.warnings]}


# Keys of the other tools' configs whose files the importers open (LLaMA-Factory's dataset_info.json
# folder, a DeepSpeed JSON): an uploaded file may not point them outside the workspace.
OPENED_KEYS = ("dataset_dir", "deepspeed")


def _confine_references(ws: Workspace, text: str) -> None:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return  # the importer reports it, with its line
    if isinstance(data, dict):
        for key in OPENED_KEYS:
            value = data.get(key)
            if isinstance(value, str) and value and value != "ONLINE" and not value.lstrip().startswith("{"):
                ws.path(value, key)


def save(ws: Workspace, target: str, text: str) -> dict:
    path = ws.path(target, "path")
    if path.suffix not in (".yaml", ".yml"):
        raise UserError(f"path: {target} is not a .yaml file", hint="configs are saved as .yaml")
    check_text(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.ui-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return {"path": ws.rel(path)}


def read(ws: Workspace, target: str) -> dict:
    path = ws.path(target, "path")
    if not path.is_file() or path.suffix not in (".yaml", ".yml"):
        raise UserError(f"path: {target} is not a YAML file in the workspace")
    return {"path": ws.rel(path), "text": path.read_text(encoding="utf-8", errors="replace")}
