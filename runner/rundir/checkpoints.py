"""Checkpoints that count only once complete and whole. The Trainer writes checkpoint-<step>; once
every rank has written its part, CHECKPOINT_COMPLETE is added, recording each file's size
(runner.train.trainer.checkpoint_callback). A launch resumes only from the newest complete
checkpoint whose files still match, and drops incomplete ones."""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from runner.rundir.layout import CHECKPOINT_MARKER, CHECKPOINTS, write_json


def checkpoints_dir(run_dir) -> Path:
    return Path(run_dir) / CHECKPOINTS


def complete_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoints, oldest first. A directory without the marker was interrupted."""
    root = checkpoints_dir(run_dir)
    found = []
    for path in root.glob("checkpoint-*") if root.is_dir() else []:
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / CHECKPOINT_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def _file_sizes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != CHECKPOINT_MARKER}


def finish_checkpoint(checkpoints: str, step: int, plan_hash: str | None = None) -> Path:
    """Mark a checkpoint that every rank has finished writing complete: resumable from now on. The
    marker records every file's size: a file cut short later (a disk that lost writes, a copy
    stopped half way) is found before the checkpoint is resumed from."""
    final = Path(checkpoints) / f"checkpoint-{step}"
    write_json(final / CHECKPOINT_MARKER, {"step": step, "time": time.time(), "plan_hash": plan_hash,
                                           "files": _file_sizes(final)})
    return final


def _format_problem(path: Path) -> str | None:
    """Whether a weights file is whole, from its own structure (reads a header, not the data):
    safetensors states where its last tensor ends; torch.save's zip files end with a directory."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if path.suffix == ".safetensors":
            if len(head) < 8:
                return f"{size} bytes: no safetensors header"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return f"cut short: {size:,} bytes, its header alone is {n + 8:,}"
            try:
                header = json.loads(fh.read(n))
                end = max([t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"] or [0])
            except (ValueError, TypeError, KeyError, IndexError):
                return "unreadable safetensors header"
            if size != 8 + n + end:
                return f"{size:,} bytes where its header describes {8 + n + end:,}"
        elif head[:4] == b"PK\x03\x04":
            import zipfile

            if not zipfile.is_zipfile(fh):
                return f"cut short: {size:,} bytes, its zip directory is missing"
    return None


def checkpoint_problem(path) -> str | None:
    """Why a complete-marked checkpoint cannot be resumed from (a file missing, cut short or of
    another size than when it was written), or None. Sizes and headers only: a digest of every
    file would read gigabytes at each save and each launch for damage that truncation checks and
    the filesystem's own checksums already catch."""
    path = Path(path)
    try:
        marker = json.loads((path / CHECKPOINT_MARKER).read_text() or "{}")
    except (OSError, ValueError):
        return f"its {CHECKPOINT_MARKER} marker is unreadable"
    files = marker.get("files") if isinstance(marker, dict) else None
    for rel, size in (files or {}).items():
        file = path / rel
        if not file.is_file():
            return f"{rel} is missing"
        if file.stat().st_size != size:
            return f"{rel} is {file.stat().st_size:,} bytes, {size:,} when it was written"
    for file in sorted(path.rglob("*")):
        problem = _format_problem(file) if file.is_file() else None
        if problem:
            return f"{file.relative_to(path).as_posix()}: {problem}"
    return None


def newest_usable_checkpoint(run_dir) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint that is whole, and a warning for each newer damaged one."""
    warnings = []
    for path in reversed(complete_checkpoints(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, warnings
        warnings.append(f"warning: {path} is damaged ({problem}): not resumed from")
    return None, warnings


def rotate_checkpoints(checkpoints: str, keep: int | None, best: str | None = None) -> None:
    """Keep the newest `keep` complete checkpoints, and `best` (output.keep_best's, whatever its
    age); drop any checkpoint without its marker (a leftover of an interrupted copy: never resumed
    from, only in the way)."""
    complete = complete_checkpoints(Path(checkpoints).parent)
    for path in Path(checkpoints).glob("checkpoint-*"):
        if path.is_dir() and path not in complete:
            shutil.rmtree(path, ignore_errors=True)
    if keep:
        kept = Path(best).name if best else None
        for old in complete[:-keep]:
            if old.name != kept:
                shutil.rmtree(old, ignore_errors=True)
