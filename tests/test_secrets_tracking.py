"""A secret given on the command line (`model.token=...`, `tracking.wandb.api_key=...`) reaches no
file: W&B records the program's arguments, so they are redacted before any tracker starts; after the
trackers close, every file of the run directory is searched, and a file holding a secret is
scrubbed and fails the run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from runner.errors import UserError
from runner.plan.resolve import make_plan
from runner.train.redaction import REDACTED, redact_args
from runner.train.command import run
from tests.tiny_model import save_tiny_model, write_config

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
TOKEN, KEY = "hf_CliSecretToken_5d1e9a7c3b", "wandbCliSecretKey_0a9b8c7d6e5f4"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def files_holding(root: Path, values) -> list[str]:
    """Every file under root, read whole, links included: independent of runner's own search."""
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and any(v.encode() in p.read_bytes() for v in values))


def wandb_config(tmp_path, model_dir, **training):
    return write_config(tmp_path, model_dir, training={"max_steps": 2, **training},
                        extra={"tracking": {"log_every": 1, "progress_bar": False,
                                            "wandb": {"project": "runner-tests", "mode": "offline"}}})


def test_redact_args_hides_secret_overrides_and_values_only():
    secrets = {"model.token": TOKEN, "tracking.wandb.api_key": KEY}
    args = ["-m", "runner", "train", "cfg.yaml", f"model.token={TOKEN}", f" tracking.wandb.api_key={KEY}",
            "training.learning_rate=1e-4", f"--note=uses {TOKEN}", "model.token=short"]
    assert redact_args(args, secrets) == [
        "-m", "runner", "train", "cfg.yaml", f"model.token={REDACTED}", f" tracking.wandb.api_key={REDACTED}",
        "training.learning_rate=1e-4", f"--note=uses {REDACTED}", f"model.token={REDACTED}"]


def test_secret_overrides_never_reach_the_wandb_run_files(tmp_path, model_dir):
    cfg = wandb_config(tmp_path, model_dir)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_API_KEY", None)
    out = subprocess.run([sys.executable, "-m", "runner", "train", str(cfg), f"model.token={TOKEN}",
                          f"tracking.wandb.api_key={KEY}"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "run"
    assert (run_dir / "RUN_COMPLETE").is_file()
    run_files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    # W&B did record the command line: with the secret values redacted.
    assert f"model.token={REDACTED}".encode() in run_files[0].read_bytes()
    assert files_holding(run_dir, [TOKEN, KEY]) == []
    assert TOKEN not in out.stdout + out.stderr and KEY not in out.stdout + out.stderr


class LeakAtTrainEnd(TrainerCallback):
    """Stands for a tracker that writes a secret into its folder of the run directory."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_end(self, args, state, control, **kwargs):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"header\nargs: model.token={TOKEN}\nfooter\n")


def test_a_secret_found_after_training_is_scrubbed_and_fails_the_run(tmp_path, model_dir):
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 2},
                       extra={"model": {"path": str(model_dir), "token": TOKEN}})
    plan = make_plan(cfg)
    leak = Path(plan.output.dir) / "wandb" / "debug.log"
    with pytest.raises(UserError) as err:
        run(plan, callbacks=[LeakAtTrainEnd(leak)])
    assert "wandb/debug.log" in err.value.message and TOKEN not in err.value.message
    assert leak.read_text() == f"header\nargs: model.token={'*' * len(TOKEN)}\nfooter\n"
    assert files_holding(Path(plan.output.dir), [TOKEN]) == []
    assert not (Path(plan.output.dir) / "RUN_COMPLETE").exists()


def test_launch_dry_run_prints_no_secret(tmp_path, model_dir):
    cfg = write_config(tmp_path, model_dir)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "runner", "launch", str(cfg), f"model.token={TOKEN}", "--cpu",
                          "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"model.token={REDACTED}" in out.stdout and TOKEN not in out.stdout + out.stderr
