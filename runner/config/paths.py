"""Paths in configs that runner serves to others. On the command line a config's paths are the
user's own (absolute data paths are normal); anything that takes configs from other people (the web
UI, a server) confines every path to its workspace with `confine` before reading or writing it."""

from __future__ import annotations

import os
from pathlib import Path

from runner.errors import UserError


def confine(path: str | os.PathLike, workspace: str | os.PathLike, key: str = "path") -> Path:
    """`path` (relative to `workspace`, or absolute) as a real path inside `workspace`, with every
    symlink and `..` resolved first; raises UserError when it lands outside. `~` is not expanded
    (a served config has no home of its own). A path that does not exist yet (an output) is judged
    by its deepest existing folder: a symlink made there later is a new path and must be confined
    again where it is used."""
    text = os.fspath(path)
    if not isinstance(text, str) or not text or "\0" in text:
        raise UserError(f"{key}: {text!r} is not a usable path", hint="give a file or folder inside the workspace")
    root = Path(workspace).resolve(strict=True)
    candidate = Path(text)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if resolved != root and not resolved.is_relative_to(root):
        raise UserError(f"{key}: {text} resolves to {resolved}, outside the workspace {root}",
                        hint="paths of a served config stay inside its workspace (symlinks and .. are followed "
                             "before this check)")
    return resolved
