"""`runner.config.paths.confine`, the rule for configs served to others (the web UI, a server): every path
stays inside the workspace, symlinks and `..` resolved first (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import UserError
from runner.config.paths import confine


@pytest.fixture
def workspace(tmp_path) -> Path:
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "data" / "train.jsonl").write_text("{}\n")
    (tmp_path / "ws-evil").mkdir()
    (tmp_path / "ws-evil" / "secret.txt").write_text("no")
    (tmp_path / "outside.txt").write_text("no")
    return ws


@pytest.mark.parametrize("path, inside", [
    ("data/train.jsonl", "data/train.jsonl"),
    ("./data/../data/train.jsonl", "data/train.jsonl"),
    ("outputs/run1", "outputs/run1"),            # not there yet: judged by its existing parent
    (".", ""),
    ("~/data", "~/data"),                        # no home expansion: a folder named "~"
])
def test_paths_inside_the_workspace_are_kept(workspace, path, inside):
    assert confine(path, workspace) == (workspace / inside).resolve()


def test_an_absolute_path_inside_is_kept(workspace):
    assert confine(str(workspace / "data" / "train.jsonl"), workspace) == workspace / "data" / "train.jsonl"


@pytest.mark.parametrize("path", ["../outside.txt", "data/../../outside.txt", "/etc/passwd", "../ws-evil/secret.txt",
                                  "data/" + "../" * 20 + "etc/passwd"])
def test_paths_that_escape_are_refused(workspace, path):
    with pytest.raises(UserError, match="outside the workspace"):
        confine(path, workspace, key="datasets.0.path")


def test_symlinks_are_followed_before_the_check(workspace, tmp_path):
    (workspace / "data" / "link.txt").symlink_to(tmp_path / "outside.txt")
    (workspace / "escape").symlink_to(tmp_path, target_is_directory=True)
    (workspace / "inner").symlink_to(workspace / "data", target_is_directory=True)
    for path in ("data/link.txt", "escape/outside.txt", "escape/ws/data/../../outside.txt", "escape/new-output"):
        with pytest.raises(UserError, match="outside the workspace"):
            confine(path, workspace)
    assert confine("inner/train.jsonl", workspace) == workspace / "data" / "train.jsonl"
    assert confine("escape/ws/data/train.jsonl", workspace) == workspace / "data" / "train.jsonl"


def test_a_symlinked_workspace_is_judged_by_its_real_path(workspace, tmp_path):
    (tmp_path / "ws-link").symlink_to(workspace, target_is_directory=True)
    assert confine("data/train.jsonl", tmp_path / "ws-link") == workspace / "data" / "train.jsonl"
    with pytest.raises(UserError):
        confine("../outside.txt", tmp_path / "ws-link")


@pytest.mark.parametrize("path", ["", "data/\0evil"])
def test_unusable_paths_are_refused(workspace, path):
    with pytest.raises(UserError, match="not a usable path"):
        confine(path, workspace)
