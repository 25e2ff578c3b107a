"""How a launch treats an existing run directory: refuse it, resume it, leave a finished run as it is,
or start over (the earlier run kept aside until the new one trains: runner.rundir.owner). `decide`
only reads; `prepare` carries the decision out, after data and model have loaded."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError
from runner.rundir.checkpoints import checkpoints_dir, newest_usable_checkpoint, rotate_checkpoints
from runner.rundir.layout import (NOT_COMPARED, OWN_FILES, OWNER_MARKER, PREVIOUS, RUN_MARKER, foreign_entries,
                                  fs_error, is_marked, read_stored_plan)


@dataclass
class Launch:
    """What to do in the run dir: 'fresh', 'resume' (from `checkpoint`), or 'done' (nothing to train)."""

    action: str
    checkpoint: str | None = None
    message: str = ""


def flatten(d, prefix="") -> dict:
    out = {}
    if isinstance(d, dict):
        for key, value in d.items():
            out.update(flatten(value, f"{prefix}{key}."))
        if not d and prefix:
            out[prefix[:-1]] = {}
    elif isinstance(d, list) and any(isinstance(v, dict) for v in d):
        for i, value in enumerate(d):
            out.update(flatten(value, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def plan_differences(stored: dict, new: dict) -> list[str]:
    """Human-readable differences that make a stored run a different run: config keys, and the
    content hashes of data and model (same keys, other bytes)."""
    old_cfg = {k: v for k, v in (stored.get("config") or {}).items() if k not in NOT_COMPARED}
    new_cfg = {k: v for k, v in (new.get("config") or {}).items() if k not in NOT_COMPARED}
    a, b = flatten(old_cfg), flatten(new_cfg)
    diffs = [f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}" for key in sorted(set(a) | set(b))
             if a.get(key) != b.get(key)]
    for name, what in (("data", "dataset / template / tokenizer bytes"), ("model", "model files")):
        old_h, new_h = (stored.get("hashes") or {}).get(name), (new.get("hashes") or {}).get(name)
        if old_h and new_h and old_h != new_h:
            diffs.append(f"hashes.{name} ({what} changed): {old_h[:12]} -> {new_h[:12]}")
    return diffs


def clear(run_dir) -> None:
    """Remove what an earlier run wrote (never foreign files); plan.json goes last, so the
    directory reads as a runner run until it is empty of ours."""
    paths = sorted((p for p in Path(run_dir).iterdir() if OWN_FILES.match(p.name)), key=lambda p: p.name == "plan.json")
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _legacy_run(run_dir, stored) -> bool:
    """A run written before run directories carried the marker: its plan.json names this folder."""
    out = stored.get("output") if isinstance(stored, dict) else None
    return isinstance(out, dict) and out.get("dir") == str(Path(run_dir).resolve()) and "hashes" in stored


def _listing(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def check_target(run_dir) -> list[str]:
    """The names in output.dir, if runner may use it: it does not exist, is empty, or carries the
    marker (or a plan.json written for this very folder by a runner before the marker). Anything
    else is refused, with overwrite too: runner never writes into or deletes from a folder it did
    not make."""
    run_dir = Path(run_dir)
    try:
        if not run_dir.exists():
            return []
        if not run_dir.is_dir():
            raise UserError(f"output.dir {run_dir} is a file, not a folder", where="output.dir",
                            hint="choose another output.dir, or move that file away")
        names = sorted(os.listdir(run_dir))
        if not names or is_marked(run_dir) or _legacy_run(run_dir, read_stored_plan(run_dir)):
            return names
    except OSError as err:
        raise fs_error(err, run_dir, "read") from None
    raise UserError(
        f"output directory {run_dir} is not empty and holds no runner run (no {OWNER_MARKER} marker): it holds "
        f"{_listing(names)}",
        where="output.dir",
        hint="runner writes only into a new or empty folder, or one it made itself, with or without overwrite: "
             "choose another output.dir, or move those files out of it",
    )


def decide(plan, *, overwrite: bool = False, resume_changed: bool = False) -> Launch:
    """How a launch treats plan.output.dir (pure decision; `prepare` carries it out).
    `resume_changed`: resume an unfinished run although its plan changed (a deliberate change,
    e.g. more steps); the differences are named in the message."""
    run_dir = Path(plan.output.dir)
    overwrite = overwrite or plan.output.overwrite
    resume = plan.output.resume
    names = check_target(run_dir)
    kept = foreign_entries(run_dir) if names else []
    note = f" (kept there, not runner's: {_listing(kept)})" if kept else ""
    stored = read_stored_plan(run_dir) if names else None
    if stored is None:
        started = [n for n in names if OWN_FILES.match(n)]  # a launch that stopped before writing its plan
        return Launch("fresh", message=f"{run_dir} holds no started run: starting in it{note}" if started or kept
                      else "")
    diffs = plan_differences(stored, plan.to_dict())
    finished = (run_dir / RUN_MARKER).is_file()
    if overwrite:
        return Launch("fresh", message=f"overwriting the earlier run in {run_dir}{note}; it is kept in "
                                       f"{run_dir / PREVIOUS} until the new run has trained its first step")
    if finished:
        if resume == "auto" and not diffs:
            return Launch("done", message=f"{run_dir} already holds this finished run; nothing to train")
        detail = ("; it differs in: " + "; ".join(diffs[:12])) if diffs else ""
        raise UserError(
            f"output directory {run_dir} holds a finished run{detail}",
            where="output.dir",
            hint="set output.overwrite: true (or pass --overwrite) to replace it, or choose another output.dir",
        )
    if resume == "never":
        return Launch("fresh", message=f"output.resume is never: starting over in {run_dir}{note}")
    usable, damaged = newest_usable_checkpoint(run_dir)
    warn = "".join(w + "\n" for w in damaged)
    if usable is None:
        return Launch("fresh", message=f"{warn}{run_dir} has no complete checkpoint: starting over{note}")
    if diffs and resume_changed:
        return Launch("resume", checkpoint=str(usable),
                      message=f"{warn}resuming from {usable.name} with a changed plan: " + "; ".join(diffs[:12]))
    if diffs:
        raise UserError(
            f"cannot resume the run in {run_dir}: the plan changed since it started; it differs in: "
            + "; ".join(diffs[:12]),
            where="output.resume",
            hint="restore those settings to resume, pass --resume-changed to resume with the change on purpose, "
            "or set output.overwrite: true / output.resume: never to start over",
        )
    return Launch("resume", checkpoint=str(usable), message=f"{warn}resuming from {usable.name}")


def prepare(plan, launch: Launch, *, is_main: bool = True) -> Path:
    run_dir = Path(plan.output.dir)
    if is_main:
        if launch.action == "fresh" and run_dir.exists():
            from runner.rundir.owner import set_aside

            set_aside(run_dir)  # deleted once the new run has trained a step (runner.rundir.owner)
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoints_dir(run_dir).mkdir(exist_ok=True)
        rotate_checkpoints(str(checkpoints_dir(run_dir)), None)  # an interrupted checkpoint is never resumed from
    return run_dir
