"""Read-only commands write nothing (`runner plan`, `runner lint`, `lint --deep`: no digest cache in
the working folder); the digest cache is written only when planning for train or preprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.plan.resolve import make_plan

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "fixtures" / "configs"


def files_under(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture
def big_data_config(tmp_path) -> Path:
    """A config whose dataset is over 1 MiB: the size from which file digests are worth caching."""
    rows = [{"instruction": f"question {i} " + "x" * 200, "input": "", "output": f"answer {i}"} for i in range(6000)]
    data = tmp_path / "cfg" / "big.json"
    data.parent.mkdir()
    data.write_text(json.dumps(rows))
    assert data.stat().st_size > 1 << 20
    cfg = tmp_path / "cfg" / "cfg.yaml"
    cfg.write_text(f"model: {{path: {CONFIGS / 'tiny-model'}}}\ndatasets:\n  - {{path: big.json}}\n")
    (tmp_path / "work").mkdir()
    return cfg


@pytest.mark.parametrize("args", [["plan"], ["plan", "--json"], ["lint"], ["lint", "--deep"], ["lint", "--format", "json"]])
def test_read_only_commands_write_nothing(big_data_config, args):
    root = big_data_config.parent.parent
    before = files_under(root)
    proc = subprocess.run([sys.executable, "-m", "runner", *args, str(big_data_config)], cwd=root / "work",
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert files_under(root) == before, "a read-only command wrote files"
    assert not (root / "work" / ".runner_cache").exists()


def test_train_and_preprocess_planning_still_caches_digests(big_data_config, monkeypatch):
    """The cache is written where outputs are written anyway, and then read: same hashes."""
    monkeypatch.chdir(big_data_config.parent.parent / "work")
    plain = make_plan(big_data_config)
    assert not Path(".runner_cache").exists()
    cached = make_plan(big_data_config, write_cache=True)
    entries = json.loads(Path(".runner_cache/digests.json").read_text())
    assert any("big.json" in key for key in entries)
    assert cached.hashes == plain.hashes == make_plan(big_data_config).hashes


def test_plan_into_a_pipe_its_reader_left_ends_quietly():
    """`runner plan cfg.yaml | head -1`: the reader closes the pipe; runner stops without a
    BrokenPipeError traceback and reports it the way a program the pipe ended does (141)."""
    proc = subprocess.Popen([sys.executable, "-m", "runner", "plan", str(REPO / "cookbook" / "quickstart.yaml")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    proc.stdout.close()  # no reader: the first write fails with EPIPE
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert proc.returncode == 141 and "Traceback" not in err and "BrokenPipe" not in err, err[-2000:]
