"""One run has one plan hash: a run stopped by SIGTERM, its resume, and the same run started from
another directory (its own copy of the model, another data cache, W&B offline) write the same
plan hash into plan.json. Machine details, cache hits and paths, tracker run ids and times stay out
of it; plan.json still records them (runtime, launch)."""

from __future__ import annotations

import json
import shutil
import signal

from tests.test_reliability_kill import ADAPTER, TRAINING
from tests.test_reliability_signals import start, wait_for_step
from tests.tiny_model import save_tiny_model, write_config

from runner.cli import main
from runner.train.signals import EXIT_INTERRUPTED


def stored(run_dir) -> dict:
    return json.loads((run_dir / "plan.json").read_text())


def test_first_launch_resume_and_another_place_share_the_plan_hash(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "model")
    first = tmp_path / "first"
    cfg = write_config(first, model_dir, training=TRAINING, adapter=ADAPTER, extra={"output": {"save_every": 100}})
    with open(first / "child.log", "w") as log:
        proc = start(cfg, log)
    wait_for_step(proc, first / "run", 3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=180) == EXIT_INTERRUPTED, (first / "child.log").read_text()[-3000:]
    interrupted = stored(first / "run")

    assert main(["train", str(cfg)]) == 0, capsys.readouterr().err
    resumed = stored(first / "run")
    assert "resuming from checkpoint-" in capsys.readouterr().err

    elsewhere = tmp_path / "elsewhere"
    copy = shutil.copytree(model_dir, tmp_path / "model-copy")
    other = write_config(elsewhere, copy, training=TRAINING, adapter=ADAPTER,
                         extra={"output": {"save_every": 100},
                                "tracking": {"log_every": 1, "progress_bar": False,
                                             "wandb": {"project": "hash-check", "mode": "offline"}}})
    assert main(["train", str(other)]) == 0, capsys.readouterr().err
    moved = stored(elsewhere / "run")

    hashes = [p["hashes"]["plan"] for p in (interrupted, resumed, moved)]
    assert hashes[0] and len(set(hashes)) == 1, hashes
    # What differs between them is recorded, outside the hash.
    assert interrupted["launch"]["data_stats"]["cache"] == "built" and resumed["launch"]["data_stats"]["cache"] == "hit"
    assert moved["launch"]["data_stats"]["cache_dir"] != resumed["launch"]["data_stats"]["cache_dir"]
    assert moved["launch"]["wandb_run_id"] and not resumed["launch"]["wandb_run_id"]
    assert moved["config_dir"] != resumed["config_dir"]
