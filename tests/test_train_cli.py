"""The launchers reach the same training code: `python -m runner cfg.yaml`, `runner train` and
`accelerate launch -m runner cfg.yaml`; config errors stop them before any model loads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_model import save_tiny_model, write_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def launch(*argv, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(list(argv), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_python_m_runner_trains_with_overrides_and_a_progress_bar(tmp_path, model_dir):
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 3}, extra={"tracking": {"progress_bar": True}})
    out = launch(sys.executable, "-m", "runner", str(cfg), "training.learning_rate=0.001")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "run"
    assert (run_dir / "RUN_COMPLETE").is_file()
    assert json.loads((run_dir / "plan.json").read_text())["training"]["learning_rate"] == 0.001
    assert "trainable params" in out.stderr and "3/3" in out.stderr and "loss=" in out.stderr


def test_config_error_exits_2_before_loading_anything(tmp_path, model_dir):
    cfg = write_config(tmp_path, model_dir, training={"learning_rate": -1})
    out = launch(sys.executable, "-m", "runner", "train", str(cfg))
    assert out.returncode == 2
    assert "training.learning_rate" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_refused_run_dir_exits_2(tmp_path, model_dir):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("user file")
    out = launch(sys.executable, "-m", "runner", str(write_config(tmp_path, model_dir)))
    assert out.returncode == 2 and "output.dir" in out.stderr and "Traceback" not in out.stderr


def test_accelerate_launch_reaches_the_same_training(tmp_path, model_dir):
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 2})
    out = launch(sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "runner", str(cfg))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["runtime"]["world_size"] == 1
    assert (tmp_path / "run" / "RUN_COMPLETE").is_file()


@pytest.mark.parametrize("own", [None, "max_split_size_mb:128"])
def test_cuda_allocator_gets_expandable_segments_unless_the_user_set_it(monkeypatch, capsys, own):
    import os

    from runner.cli import CUDA_ALLOC_CONF, main

    if own is None:
        monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    else:
        monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", own)
    assert main(["schema"]) == 0
    capsys.readouterr()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == (own or CUDA_ALLOC_CONF)
