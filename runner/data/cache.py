"""The tokenized-data cache: Arrow datasets under <cache_dir>/<data_hash>/, written to a temp
dir and renamed into place, so a half-written entry is never read. Under torch.distributed the
local main process builds while the others wait, then everyone loads the same files.

Every entry carries checksums.json, written last: the size and SHA-256 of each of its files. An
entry is used only once they all match; a damaged one (flipped bytes, a truncated or missing file,
no checksums) is rebuilt with a warning naming it, never read. Verifying reads every file of the
entry once per load, hashed in parallel over the Arrow shards (about a second per GB per core);
training reads the same pages from the page cache afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

STATS_FILE = "stats.json"
CHECKSUMS_FILE = "checksums.json"
WAIT_SECONDS = 6 * 3600


def entry_dir(cache_dir: str, data_hash: str) -> Path:
    return Path(cache_dir) / data_hash


def is_complete(entry: Path) -> bool:
    return (entry / CHECKSUMS_FILE).is_file()


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checksums(root: Path) -> dict:
    """{relative path: {size, sha256}} of every file under root but the checksums file."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # hashlib releases the GIL
        digests = list(pool.map(_sha256, files))
    return {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": d} for p, d in zip(files, digests)}


def damage(entry: Path) -> str | None:
    """Why the entry cannot be used, or None when every file matches its checksum."""
    try:
        expected = json.loads((entry / CHECKSUMS_FILE).read_text())["files"]
    except FileNotFoundError:
        return "it has no checksums (its writing was cut short, or an older runner wrote it)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {CHECKSUMS_FILE} is unreadable"
    if not isinstance(expected, dict) or STATS_FILE not in expected:
        return f"its {CHECKSUMS_FILE} is unreadable"
    for name, want in sorted(expected.items()):
        try:
            size = (entry / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != want.get("size"):
            return f"{name} is {size} bytes, {want.get('size')} expected"
    names = sorted(expected)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(lambda n: _sha256(entry / n), names))
    for name, digest in zip(names, digests):
        if digest != expected[name].get("sha256"):
            return f"{name} does not match its checksum"
    return None


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
    (tmp / CHECKSUMS_FILE).write_text(json.dumps({"files": checksums(tmp)}, indent=1, sort_keys=True))
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


def _usable(entry: Path, warn: bool):
    """The loaded entry when it is there and sound; else None, after moving a damaged one aside
    (warn=True: the process that will rebuild it says so, naming it)."""
    if not entry.exists():
        return None
    problem = damage(entry)
    if problem is None:
        try:
            return load(entry)
        except Exception as e:  # checksums match but the library cannot read it (another datasets version)
            problem = f"it cannot be loaded ({type(e).__name__}: {e})"
    if warn:
        print(f"warning: data cache entry {entry} is damaged: {problem}; rebuilding it", file=sys.stderr)
        _discard(entry)
    return None


def _discard(entry: Path) -> None:
    """Move a damaged entry out of the way (a rename, so that no reader sees it half deleted), then delete it."""
    aside = entry.parent / f".damaged-{entry.name}-{os.getpid()}"
    try:
        os.rename(entry, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def build_or_load(entry: Path, build):
    """(train, eval, stats, built: bool). `build()` returns (train, eval, stats); it runs on the
    local main process only when distributed, the others wait for the entry and load it."""
    dist = _dist()
    failed = entry.parent / f".failed-{entry.name}"
    if dist is not None:
        # With a process group every rank takes the same path through one barrier: a rank that
        # found the entry complete and returned early would leave the others waiting for ever.
        built = False
        if local_rank() == 0 and _usable(entry, warn=True) is None:
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
        return (*load(entry), built)  # the main process has just verified or written it
    if local_rank() == 0:
        loaded = _usable(entry, warn=True)
        if loaded is not None:
            return (*loaded, False)
        failed.unlink(missing_ok=True)
        try:
            train, evaluation, stats = build()
            save(entry, train, evaluation, stats)
        except BaseException:
            entry.parent.mkdir(parents=True, exist_ok=True)
            failed.touch()
            raise
        return (*load(entry), True)
    loaded = _wait_for(entry, failed)  # processes without a group yet: the file is the rendezvous
    if loaded is None:
        raise RuntimeError(f"the main process failed to build the data cache {entry}")
    return (*loaded, False)


def _wait_for(entry: Path, failed: Path):
    """The entry once it is complete and sound (the main process replaces a damaged one), or None."""
    deadline = time.monotonic() + WAIT_SECONDS
    judged = None  # the checksums file already found damaged: not hashed again until it changes
    while not failed.exists() and time.monotonic() < deadline:
        try:
            mark = (entry / CHECKSUMS_FILE).stat()
            mark = (mark.st_ino, mark.st_mtime_ns)
        except OSError:
            mark = None
        if mark is not None and mark != judged:
            loaded = _usable(entry, warn=False)
            if loaded is not None:
                return loaded
            judged = mark
        time.sleep(1.0)
    return None
