"""Hub repositories in the local Hugging Face cache, read without the network: which commit a
revision names there and the snapshot folder holding that commit's files. Pure (no ML library):
the plan hashes a hub dataset by this commit id, and the reader loads its files from the snapshot."""

from __future__ import annotations

import os
import re
from pathlib import Path

COMMIT = re.compile(r"^[0-9a-f]{40}$")


def cache_root() -> Path:
    return Path(os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"))


def cached(repo_id: str, revision: str | None, kind: str = "datasets") -> tuple[str | None, Path | None]:
    """(commit id, snapshot folder) of `repo_id` at `revision` (a branch, tag or commit; None:
    main). The commit is known when the revision is a commit id or the cache has a ref for it; the
    folder only when the cache holds that commit's snapshot."""
    repo = cache_root() / f"{kind}--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / (revision or "main")
    commit = None
    if revision and COMMIT.match(revision):
        commit = revision
    elif ref.is_file() and ".." not in Path(revision or "main").parts:
        commit = ref.read_text().strip() or None
    snap = repo / "snapshots" / commit if commit and COMMIT.match(commit) else None
    return commit, (snap if snap is not None and snap.is_dir() else None)
