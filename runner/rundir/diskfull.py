"""A full disk while a checkpoint or the final model is written: a clear error (exit 2), no half
written file left behind.

On a full disk only some writers raise OSError(ENOSPC): torch.save raises RuntimeError from its
zip writer (with texts such as "unexpected pos 576 vs 534" that name no errno), safetensors raises
SafetensorError ("No space left on device (os error 28)"). An error that names ENOSPC is a full
disk; a RuntimeError that names nothing counts as one only when the filesystem really has less
room left than the write needed. Any other error goes on as it was raised."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from runner.errors import UserError

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_TEXTS = ("No space left on device", "os error 28", "StorageFull", "Disk quota exceeded", "os error 122")
# Below this a failed write is taken as the disk being full even when the estimate is smaller.
SLACK = 1 << 20


def save_errors() -> tuple:
    """What a save raises on a full disk (and on other failures, told apart by is_disk_full)."""
    from safetensors import SafetensorError

    return (OSError, RuntimeError, SafetensorError)


def free_bytes(path) -> int | None:
    """Free bytes on the filesystem holding `path` (its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def is_disk_full(err: BaseException, free: int | None, needed: int) -> bool:
    if isinstance(err, OSError):
        return err.errno in FULL_ERRNOS
    if any(text in str(err) for text in FULL_TEXTS):
        return True
    return isinstance(err, RuntimeError) and free is not None and free < max(needed, SLACK)


def tree_bytes(path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def saved_weights(trainer) -> tuple[int, str]:
    """(bytes, what they are) of the weights a save writes: an adapter's trainable tensors, or the
    whole model's."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    adapter = hasattr(model, "peft_config")
    size = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad or not adapter)
    return size, "the adapter's weights" if adapter else "the model's weights"


def optimizer_bytes(optimizer) -> int:
    import torch

    if optimizer is None:
        return 0
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if isinstance(t, torch.Tensor))


def _amount(n: int) -> str:
    return f"{n:,} bytes" + (f" ({n / 2**20:,.1f} MiB)" if n >= 2**20 else "")


def full_disk_message(where, needed: int, how: str, free: int | None) -> str:
    room = f", {_amount(free)} free" if free is not None else ""
    return f"the disk is full at {where}: about {_amount(needed)} needed ({how}){room}"


def raise_if_full(err: OSError) -> None:
    if err.errno in FULL_ERRNOS:
        where = err.filename or "the run directory"
        raise UserError(f"could not write {where}: the disk is full ({err.strerror})", where=str(where),
                        hint="free space there, then run the same command again: it resumes from the newest "
                             "complete checkpoint, or starts over without one") from err


@contextlib.contextmanager
def guard(run_dir, what: str, needed):
    """Around the final save into `run_dir`: on a full disk, the files this save began are
    removed (never taken for a finished model) and a UserError says how much room it needs.
    `needed()` gives (bytes, how they were estimated); called only on failure."""
    run_dir = Path(run_dir)
    before = set(os.listdir(run_dir))
    try:
        yield
    except save_errors() as err:
        size, how = needed()
        if not is_disk_full(err, free_bytes(run_dir), size):
            raise
        for name in set(os.listdir(run_dir)) - before:
            path = run_dir / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        raise UserError(f"could not write {what}: {full_disk_message(run_dir, size, how, free_bytes(run_dir))}",
                        where=str(run_dir),
                        hint="free space there, then run the same command again: it resumes from the newest "
                             "complete checkpoint, or starts over without one") from err
