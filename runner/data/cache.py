"""The tokenized-data cache: Arrow datasets under <cache_dir>/<data_hash>/, written to a temp
dir and renamed into place, so a half-written entry is never read. Under torch.distributed the
local main process builds while the others wait, then everyone loads the same files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

STATS_FILE = "stats.json"
WAIT_SECONDS = 6 * 3600


def entry_dir(cache_dir: str, data_hash: str) -> Path:
    return Path(cache_dir) / data_hash


def is_complete(entry: Path) -> bool:
    return (entry / STATS_FILE).is_file()


def load(entry: Path) -> tuple:
    import datasets

    stats = json.loads((entry / STATS_FILE).read_text())
    train = datasets.load_from_disk(str(entry / "train"))
    evaluation = datasets.load_from_disk(str(entry / "eval")) if (entry / "eval").is_dir() else None
    return train, evaluation, stats


def save(entry: Path, train, evaluation, stats: dict) -> None:
    from datasets.utils import logging as ds_logging

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()  # our own bar covered the slow part; saving is instant
    try:
        train.save_to_disk(str(tmp / "train"))
        if evaluation is not None:
            evaluation.save_to_disk(str(tmp / "eval"))
    finally:
        if bars:
            ds_logging.enable_progress_bar()
    (tmp / STATS_FILE).write_text(json.dumps(stats, indent=1, sort_keys=True))
    try:
        os.rename(tmp, entry)
    except OSError:  # another process finished the same entry first: theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_complete(entry):
            raise


def _dist():
    """torch.distributed when it is initialised, without importing torch when it is not."""
    if "torch.distributed" not in sys.modules:
        return None
    dist = sys.modules["torch.distributed"]
    return dist if dist.is_available() and dist.is_initialized() else None


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def build_or_load(entry: Path, build):
    """(train, eval, stats, built: bool). `build()` returns (train, eval, stats); it runs on the
    local main process only when distributed, the others wait for the entry and load it."""
    dist = _dist()
    failed = entry.parent / f".failed-{entry.name}"
    if dist is not None:
        # With a process group every rank takes the same path through one barrier: a rank that
        # found the entry complete and returned early would leave the others waiting for ever.
        built = False
        if local_rank() == 0 and not is_complete(entry):
            try:
                train, evaluation, stats = build()
                save(entry, train, evaluation, stats)
                built = True
            except BaseException:
                dist.barrier()
                raise
        dist.barrier()
        if not is_complete(entry):
            raise RuntimeError(f"the main process failed to build the data cache {entry}")
        return (*load(entry), built)
    if is_complete(entry):
        return (*load(entry), False)
    if local_rank() == 0:
        failed.unlink(missing_ok=True)
        try:
            train, evaluation, stats = build()
            save(entry, train, evaluation, stats)
        except BaseException:
            entry.parent.mkdir(parents=True, exist_ok=True)
            failed.touch()
            raise
        return (*load(entry), True)
    _wait_for(entry, failed)  # processes without a group yet: the file is the rendezvous
    if not is_complete(entry):
        raise RuntimeError(f"the main process failed to build the data cache {entry}")
    return (*load(entry), False)


def _wait_for(entry: Path, failed: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not is_complete(entry) and not failed.exists() and time.monotonic() < deadline:
        time.sleep(1.0)
