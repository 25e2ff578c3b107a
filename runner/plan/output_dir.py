"""Checks of the run's name and output.dir made while planning (pure: no ML imports, nothing
written). A name becomes a folder name, so it must be one: no separators, not `.` or `..`, short
enough for every filesystem. output.dir must not be, hold or sit inside the model or a dataset:
replacing a run there would delete the files it trains on."""
from __future__ import annotations

import os
import re
from pathlib import Path

from runner.errors import UserError

NAME = re.compile(r"[A-Za-z0-9._-]+")
MAX_NAME = 100
NAME_MAX_BYTES = 255  # longest file name on ext4, xfs, btrfs, tmpfs, NFS


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a run's folder name, or None."""
    if not NAME.fullmatch(name):
        return "may hold only letters, digits, '.', '_' and '-'"
    if name in (".", ".."):
        return f"{name!r} names a folder that already exists (the current or the parent one)"
    if len(name) > MAX_NAME:
        return f"is {len(name)} characters long; at most {MAX_NAME}"
    return None


def check_name(name: str, given: bool, where) -> list[UserError]:
    problem = name_problem(name)
    if problem is None:
        return []
    if given:
        return [UserError(f"name: {name[:60]!r}{'...' if len(name) > 60 else ''} {problem}", where=where(("name",)),
                          hint="the name becomes the folder outputs/<name>: use a short plain name")]
    return [UserError(f"the run name taken from the config file's name, {name[:60]!r}, {problem}", where=where(()),
                      hint="set `name:` in the config")]


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_dir(output_dir: str, inputs: list[tuple[str, str]], where) -> list[UserError]:
    """output.dir after `{name}` is filled in, against what is on disk and the run's inputs
    (`inputs`: (key, resolved local path) of the model, tokenizer and datasets)."""
    run_dir = Path(output_dir)
    here = where(("output", "dir"))
    errors = []
    for part in run_dir.parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX_BYTES:
            errors.append(UserError(f"output.dir: the folder name {part[:40]!r}... is {size} bytes; "
                                    f"filesystems allow {NAME_MAX_BYTES}", where=here,
                                    hint="shorten output.dir (or the name it is made from)"))
            return errors
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            what = "output.dir" if parent == run_dir else f"output.dir's parent {parent}"
            errors.append(UserError(f"{what} is a file, not a folder: {parent}", where=here,
                                    hint="choose another output.dir, or move that file away"))
            return errors
        if parent.exists():
            break
    for key, path in inputs:
        other = Path(path)
        if _inside(run_dir, other) or _inside(other, run_dir):
            relation = ("is" if run_dir == other else "is inside" if _inside(run_dir, other) else "holds")
            errors.append(UserError(f"output.dir {run_dir} {relation} {key} {other}: replacing the run would "
                                    f"delete what it trains on", where=here,
                                    hint=f"choose an output.dir apart from {key}"))
    return errors


def local_inputs(model: dict, data: dict) -> list[tuple[str, str]]:
    """(key, path) of the run's inputs that are on this machine."""
    found = []
    if model["source"] == "local":
        found.append(("model.path", model["path"]))
    tok = data["tokenizer"]["path"]
    if tok and tok != model["path"] and os.path.isabs(tok) and os.path.exists(tok):
        found.append(("model.tokenizer", tok))
    for group in ("datasets", "eval_datasets"):
        for i, ds in enumerate(data[group]):
            if ds.get("source") == "local":
                found.append((f"{group}.{i}.path", ds["path"]))
    return found
