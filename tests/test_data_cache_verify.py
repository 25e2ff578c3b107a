"""The data cache is verified before use: a cached entry with flipped bytes, a truncated Arrow file, a
missing state/stats file or no checksums is rebuilt with a warning naming it, and the run goes on
with the same data as a fresh build; a damaged entry is never used and never crashes a run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli import main
from test_data_support import SHARED, tiny_model_dir, write_config


def _config(tmp_path):
    data = tmp_path / "identity.json"
    shutil.copy(SHARED / "identity.json", data)
    return write_config(tmp_path, [{"path": str(data), "format": "alpaca", "substitute": {"name": "N", "author": "A"}}],
                        model={"path": str(tiny_model_dir(tmp_path))}, template={"name": "chatml"},
                        sequence={"max_length": 256}, val_size=5)


def _entry(tmp_path) -> Path:
    (entry,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return entry


def _arrow(entry: Path) -> Path:
    (arrow,) = sorted((entry / "train").glob("*.arrow"))
    return arrow


def _flip(path: Path):
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 8] = bytes(b ^ 0x5A for b in raw[middle:middle + 8])
    path.write_bytes(bytes(raw))


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "flipped_arrow": (lambda e: _flip(_arrow(e)), "does not match its checksum"),
    "truncated_arrow": (lambda e: _truncate(_arrow(e)), "bytes, "),
    "missing_state": (lambda e: (e / "train" / "state.json").unlink(), "train/state.json is missing"),
    "missing_stats": (lambda e: (e / "stats.json").unlink(), "stats.json is missing"),
    "missing_eval_split": (lambda e: shutil.rmtree(e / "eval"), "is missing"),
    "no_checksums": (lambda e: (e / "checksums.json").unlink(), "has no checksums"),
    "garbled_checksums": (lambda e: (e / "checksums.json").write_text("{"), "checksums.json is unreadable"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_entry_is_rebuilt_with_a_warning(tmp_path, capsys, kind):
    cfg = _config(tmp_path)
    assert main(["preprocess", str(cfg), "--json"]) == 0
    first = capsys.readouterr()
    entry = _entry(tmp_path)
    assert "cache: built" in first.err and (entry / "checksums.json").is_file()
    damage, reason = DAMAGE[kind]
    damage(entry)

    assert main(["preprocess", str(cfg), "--json"]) == 0
    second = capsys.readouterr()
    assert f"warning: data cache entry {entry} is damaged: " in second.err and reason in second.err
    assert "rebuilding it" in second.err and f"cache: built {entry}" in second.err
    assert "Traceback" not in second.err
    assert json.loads(second.out) == json.loads(first.out)

    assert main(["preprocess", str(cfg), "--json"]) == 0  # the rebuilt entry is sound
    third = capsys.readouterr()
    assert "cache: hit" in third.err and "is damaged" not in third.err
    assert not [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith((".damaged", ".tmp"))]


def test_training_on_a_damaged_cache_rebuilds_it_and_trains(tmp_path):
    from tests.tiny_model import save_tiny_model
    from tests.tiny_model import write_config as train_config

    cfg = train_config(tmp_path, save_tiny_model(tmp_path / "model"), training={"max_steps": 2})
    repo = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    pre = subprocess.run([sys.executable, "-m", "runner", "preprocess", str(cfg)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert pre.returncode == 0, pre.stderr[-2000:]
    entry = _entry(tmp_path)
    _flip(_arrow(entry))
    done = subprocess.run([sys.executable, "-m", "runner", "train", str(cfg)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"warning: data cache entry {entry} is damaged" in done.stderr
    assert (tmp_path / "run" / "RUN_COMPLETE").is_file()
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["launch"]["data_stats"]["cache"] == "built"
