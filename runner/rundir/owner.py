"""Who owns a run directory, and a replaced run kept until its replacement has trained.

`claim` (rank 0 of machine 0, or `runner launch` there) runs before the directory is judged: it
refuses a folder runner did not make, writes the `.runner-run` marker first into one it makes or
adopts, and takes the run's lock (runner.rundir.lock) for the launch's life.

A run replaced by a fresh launch (overwrite, resume: never, no usable checkpoint) is not deleted
when the launch starts: its files move into `.runner-previous/` inside the run directory (a rename,
no copy) and are deleted once the new run has taken its first optimizer step. A launch that stops
before that (a bad row, a missing model file, out of memory at step 1, a kill) gives it back: at
once when it stops with an error, or at the next launch when it was killed."""
from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runner.rundir import judge, layout, lock as runlock

# Moved aside checkpoints first and plan.json last, and back in the opposite order: a rank that
# judges the folder meanwhile never sees a finished run's checkpoints without its plan and marker.
_LAST = {"plan.json": 2, layout.RUN_MARKER: 1}


def _order(name: str) -> int:
    return -1 if name == layout.CHECKPOINTS else _LAST.get(name, 0)


def _say(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass
class Owner:
    run_dir: Path
    lock: runlock.RunLock
    created: bool  # this launch made the folder

    def release(self) -> None:
        self.lock.release()

    def abandon(self) -> None:
        """The launch stopped before training: give a replaced run back; a folder this launch made
        and left empty of runs goes away."""
        if (self.run_dir / layout.PREVIOUS).is_dir():
            restore_previous(self.run_dir, "this launch stopped before training")
        elif self.created and set(os.listdir(self.run_dir)) <= {layout.OWNER_MARKER, runlock.LOCK_FILE}:
            for name in (layout.OWNER_MARKER, runlock.LOCK_FILE):
                (self.run_dir / name).unlink(missing_ok=True)
            try:
                self.run_dir.rmdir()
            except OSError:
                pass  # someone else put something there meanwhile: it stays


def claim(plan) -> Owner:
    """Refuse a folder that is not runner's, mark and lock it; gives back a run that a killed launch
    had set aside. UserError (exit 2) when another launch holds it."""
    run_dir = Path(plan.output.dir)
    created = mark(plan)
    try:
        lock = runlock.acquire(run_dir)
    except OSError as err:
        raise layout.fs_error(err, run_dir, "lock") from None
    owner = Owner(run_dir, lock, created)
    try:
        shutil.rmtree(run_dir / f"{layout.PREVIOUS}.deleting", ignore_errors=True)  # its replacement trained
        if (run_dir / layout.PREVIOUS).is_dir():
            restore_previous(run_dir, "the launch that replaced it stopped before training")
    except BaseException:
        owner.release()
        raise
    return owner


def mark(plan) -> bool:
    """Make output.dir runner's (refusing a folder that is not): the marker is the first thing
    written into it. True when this call made the folder."""
    run_dir = Path(plan.output.dir)
    judge.check_target(run_dir)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not layout.is_marked(run_dir):
            from runner import __version__

            layout.write_json(run_dir / layout.OWNER_MARKER, {
                "runner": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "name": plan.name,
                "host": socket.gethostname(),
                "note": "this folder is a runner run directory; runner replaces only its own files here"})
    except OSError as err:
        raise layout.fs_error(err, run_dir, "create") from None
    return created


def set_aside(run_dir: Path) -> None:
    """Move the files of the run being replaced into PREVIOUS (rank 0, under the lock)."""
    own = sorted((n for n in os.listdir(run_dir) if layout.OWN_FILES.match(n)), key=_order)
    if not own:
        return
    keep = run_dir / layout.PREVIOUS
    keep.mkdir()
    for name in own:
        os.replace(run_dir / name, keep / name)


def restore_previous(run_dir: Path, why: str) -> None:
    """Put a set-aside run back in place of what the stopped launch wrote."""
    keep = run_dir / layout.PREVIOUS
    judge.clear(run_dir)
    for name in sorted(os.listdir(keep), key=_order, reverse=True):
        os.replace(keep / name, run_dir / name)
    keep.rmdir()
    _say(f"{why}: the earlier run in {run_dir} is back in place")


def drop_previous(run_dir: Path) -> None:
    keep = run_dir / layout.PREVIOUS
    if keep.is_dir():
        gone = keep.with_name(f"{layout.PREVIOUS}.deleting")  # a kill half way through leaves no half run
        os.replace(keep, gone)
        shutil.rmtree(gone, ignore_errors=True)


def first_step_callback(run_dir: Path):
    """A TrainerCallback that deletes the replaced run once the new one has trained a step."""
    from transformers import TrainerCallback

    class DropReplacedRun(TrainerCallback):
        done = False

        def on_step_end(self, args, state, control, **kwargs):
            if not self.done and state.global_step >= 1:
                drop_previous(run_dir)
                self.done = True

    return DropReplacedRun()
