"""Rows of a hub dataset (a subset, a split, a revision) or of a local dataset-repository folder.

A hub dataset is read from its snapshot in the local Hugging Face cache, the commit its revision
names there (the commit the data hash was made from); only a snapshot not yet cached is
downloaded, and only when the hub can be reached. The repository's own layout (its README's
`configs:`, or its folders and file names) tells which files make a subset's split: datasets
reads that, as a stream, so nothing is converted or held whole and nothing is written elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from runner.errors import UserError
from runner.plan import hub


def hub_rows(ds: dict):
    repo, revision = ds["path"], ds.get("revision")
    commit, snapshot = hub.cached(repo, revision)
    at = f"@{revision}" if revision else ""
    if snapshot is None:
        from runner.data.readers import hub_offline_reason

        reason = hub_offline_reason()
        if reason:
            raise UserError(
                f"dataset {repo!r}{at} is not a local file or folder, is not in the local Hugging Face cache, "
                f"and the hub cannot be used: {reason}", where=f"datasets: {repo}",
                hint=f"download it while online (huggingface-cli download --repo-type dataset {repo}"
                     + (f" --revision {revision}" if revision else "") + "), or point path at local files")
        snapshot, commit = _download(repo, revision)
    yield from repository_rows(snapshot, ds, f"hub:{repo}@{commit[:12]}")


def _download(repo: str, revision: str | None) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, repo_type="dataset", revision=revision))
    except Exception as e:  # the hub raises many types; the user needs the message, not the class
        raise UserError(f"could not download hub dataset {repo!r}: {e}", where=f"datasets: {repo}") from None
    return folder, folder.name


def repository_rows(folder: Path, ds: dict, label: str):
    """(where, row) for the subset and split of a dataset repository laid out on disk."""
    import datasets

    subset, split = ds.get("subset"), ds.get("split") or "train"
    try:
        rows = datasets.load_dataset(str(folder), name=subset, split=split, streaming=True)
        rows = iter(rows)
        first = next(rows, None)
    except Exception as e:  # datasets raises ValueError, FileNotFoundError, its own types: the message says which
        raise UserError(f"cannot read {'subset ' + repr(subset) + ', ' if subset else ''}split {split!r} of "
                        f"dataset {ds['path']}: {_first_line(e)}", where=f"datasets: {ds['path']}",
                        hint=_subsets_hint(folder)) from None
    name = f"{label}[{subset + '/' if subset else ''}{split}]"
    if first is None:
        return
    yield f"{name}:row 1", first
    for i, row in enumerate(rows, 2):
        yield f"{name}:row {i}", row


def _first_line(error: Exception) -> str:
    text = str(error).strip() or error.__class__.__name__
    return text.splitlines()[0][:500]


def _subsets_hint(folder: Path) -> str:
    import datasets

    try:
        names = datasets.get_dataset_config_names(str(folder))
    except Exception:  # a repository datasets cannot read at all: the error above says why
        return "check the dataset's subset (configuration) and split names"
    return f"subsets here: {', '.join(names)}; set subset: and split: to one of them"
