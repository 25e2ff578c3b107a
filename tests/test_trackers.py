"""TensorBoard, MLflow and SwanLab on at once, on one tiny run of real `runner train` processes that
is interrupted twice: SIGTERM (a clean stop at a checkpoint), then kill -9 (steps logged after the
last checkpoint, trained again by the resumed launch). Each tracker is read back with its own
tools: TensorBoard's event reader, the MLflow client on the run's SQLite store, SwanLab's run-file
reader (the one `swanlab sync` uses). Each holds one run, the plan's hashes as parameters, and
train/loss once per step with metrics.jsonl's values; no secret reaches any of their files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from runner.train.signals import EXIT_INTERRUPTED
from tests.test_reliability_signals import wait_for_step
from tests.tiny_model import REPO, save_tiny_model, write_config

TOKEN, KEY = "mlflowTrackerToken_4c2e8a1f9b", "swanlabTrackerKey_7d3b9e2a0c"
MAX_STEPS = 12
TRACKING = {"log_every": 1, "progress_bar": False, "tensorboard": True, "mlflow": {"experiment": "runner-tests"},
            "swanlab": {"project": "runner-tests"}}

# A `runner train` child whose steps are slowed (numerics untouched) so a signal lands mid-run.
CHILD = """
import sys, time
import torch
torch.set_num_threads(1)
from transformers import Trainer
step = Trainer.training_step
def slow(self, *a, **k):
    time.sleep(0.25)
    return step(self, *a, **k)
Trainer.training_step = slow
from runner.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
"""


def launch(cfg, log_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO),
           "HF_HUB_OFFLINE": "1"}
    for name in ("MLFLOW_TRACKING_URI", "SWANLAB_MODE", "MLFLOW_TRACKING_TOKEN", "SWANLAB_API_KEY"):
        env.pop(name, None)
    with open(log_path, "a") as log:
        return subprocess.Popen([sys.executable, "-c", CHILD, str(cfg), *args], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def tracker_runs(run_dir: Path) -> dict:
    return json.loads((run_dir / "plan.json").read_text())["launch"]["tracker_runs"]


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """(run dir, {launch: tracker run ids}, SIGTERM's step, kill -9's checkpoint step, steps logged before the kill)."""
    root = tmp_path_factory.mktemp("trackers")
    model_dir = save_tiny_model(root / "model")
    cfg = write_config(root, model_dir, training={"max_steps": MAX_STEPS},
                       extra={"tracking": TRACKING, "output": {"save_every": 2}})
    run_dir, log = root / "run", root / "child.log"
    ids = {}

    first = launch(cfg, log, f"tracking.mlflow.token={TOKEN}", f"tracking.swanlab.api_key={KEY}")
    wait_for_step(first, run_dir, 3)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=180) == EXIT_INTERRUPTED, log.read_text()[-3000:]
    ids["sigterm"] = tracker_runs(run_dir)
    stopped = max(r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()))

    second = launch(cfg, log)
    wait_for_step(second, run_dir, stopped + 5)
    second.kill()  # SIGKILL: no handler, no tracker closes
    second.wait(timeout=60)
    ids["killed"] = tracker_runs(run_dir)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    logged = max(json.loads(line)["step"] for line in lines if line.strip().endswith("}"))
    checkpoints = [int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*")
                   if (p / "CHECKPOINT_COMPLETE").is_file()]

    third = launch(cfg, log)
    assert third.wait(timeout=300) == 0, log.read_text()[-3000:]
    ids["resumed"] = tracker_runs(run_dir)
    assert (run_dir / "RUN_COMPLETE").is_file()
    return run_dir, ids, stopped, max(checkpoints), logged


def train_losses(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if r.get("kind") == "train"}
    assert sorted(losses) == list(range(1, MAX_STEPS + 1))
    return losses


def test_the_kill_left_steps_after_its_checkpoint(interrupted_run):
    _, _, stopped, checkpoint, logged = interrupted_run
    assert stopped >= 3 and logged > checkpoint >= stopped  # the resumed launch trained steps logged already


def test_one_run_id_per_tracker_across_launches(interrupted_run):
    run_dir, ids, *_ = interrupted_run
    assert ids["sigterm"] == ids["killed"] == ids["resumed"]
    assert set(ids["resumed"]) == {"tensorboard", "mlflow", "swanlab"}


def test_tensorboard_reader_finds_every_step_once_after_the_purge(interrupted_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, *_ = interrupted_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert [e.step for e in scalars] == list(range(1, MAX_STEPS + 1))
    losses = train_losses(run_dir)
    assert [e.value for e in scalars] == pytest.approx([losses[s] for s in range(1, MAX_STEPS + 1)], rel=1e-6)
    assert "eval/eval_loss" not in events.Tags()["scalars"] and "train/tokens_per_s" in events.Tags()["scalars"]
    # The plan and its hashes as the run's hparams session.
    start_info = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["hashes"]["config"].encode() in start_info and b"training.learning_rate" in start_info


def test_mlflow_client_lists_the_one_run_with_params_and_metrics(interrupted_run):
    from mlflow.tracking import MlflowClient

    run_dir, ids, _, checkpoint, _ = interrupted_run
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("runner-tests")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == ids["resumed"]["mlflow"] and run.info.status == "FINISHED"
    plan = json.loads((run_dir / "plan.json").read_text())
    params = run.data.params
    assert params["hashes.config"] == plan["hashes"]["config"] and params["hashes.data"] == plan["hashes"]["data"]
    assert float(params["training.learning_rate"]) == plan["training"]["learning_rate"]
    assert params["tracking.mlflow.token"] == "<secret>"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, MAX_STEPS + 1))  # each step once
    losses = train_losses(run_dir)
    assert {m.step: m.value for m in history} == pytest.approx(losses, rel=1e-6)
    assert {"train/lr", "train/grad_norm", "train/tokens", "summary/train_runtime"} <= set(run.data.metrics)


def swanlab_records(run_dir: Path, run_id: str):
    """Every launch's run file of this id, read with SwanLab's own reader."""
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    launches = []
    for path in sorted((run_dir / "swanlog").glob("run-*/run-*.swanlab")):
        reader, records = DataStoreReader(), []
        if path.stat().st_size:  # SwanLab buffers its file: a launch killed early may have left it empty
            reader.open(path)
            for data in reader:
                record = Record()
                record.ParseFromString(data)
                records.append(record)
            reader.close()
        launches.append((path, records))
    return launches


def test_swanlab_offline_run_holds_the_metrics_once_under_one_id(interrupted_run):
    run_dir, ids, stopped, checkpoint, _ = interrupted_run
    run_id = ids["resumed"]["swanlab"]
    launches = swanlab_records(run_dir, run_id)
    assert len(launches) == 3 and all(path.name == f"run-{run_id}.swanlab" for path, _ in launches)
    assert {records[0].start.id for _, records in launches if records} == {run_id}
    assert launches[0][1] and launches[-1][1]  # the launch stopped by SIGTERM and the last one are whole
    scalars = [r.scalar for _, records in launches for r in records if r.WhichOneof("record_type") == "scalar"]
    counts = Counter((s.key, s.step) for s in scalars)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    loss = {s.step: s.value.number for s in scalars if s.key == "train/loss"}
    # SwanLab buffers its offline file: a kill -9 may cost the killed launch's last records. The
    # launch stopped by SIGTERM and the launch after the kill are whole.
    assert set(range(1, stopped + 1)) | set(range(checkpoint + 1, MAX_STEPS + 1)) <= set(loss)
    losses = train_losses(run_dir)
    assert loss == pytest.approx({s: losses[s] for s in loss}, rel=1e-6)
    config = (launches[-1][0].parent / "files" / "config.yaml").read_text()
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["hashes"]["config"] in config and plan["hashes"]["plan"] in config


def test_no_tracker_file_holds_a_secret(interrupted_run):
    run_dir, *_ = interrupted_run
    held = [str(p) for p in run_dir.rglob("*")
            if p.is_file() and any(s.encode() in p.read_bytes() for s in (TOKEN, KEY))]
    assert held == []
    assert any((run_dir / "swanlog").rglob("*.json"))  # SwanLab wrote its metadata (the command line) there


@pytest.fixture(scope="module")
def small_plan(tmp_path_factory):
    from runner.plan.resolve import make_plan

    root = tmp_path_factory.mktemp("plan")
    cfg = write_config(root, save_tiny_model(root / "model"), extra={"tracking": TRACKING})
    return make_plan(cfg), root


def test_swanlab_online_without_a_key_is_refused_before_it_starts(small_plan, monkeypatch):
    import dataclasses

    from runner.errors import UserError
    from runner.train.tracker_swanlab import start_swanlab

    plan, root = small_plan
    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)
    monkeypatch.delenv("SWANLAB_MODE", raising=False)
    online = dataclasses.replace(plan.tracking.swanlab, mode="online")
    plan = dataclasses.replace(plan, tracking=dataclasses.replace(plan.tracking, swanlab=online))
    with pytest.raises(UserError) as err:
        start_swanlab(plan, root / "run", None)
    assert "no SwanLab API key" in err.value.message and "SWANLAB_API_KEY" in err.value.hint
    assert not (root / "run" / "swanlog").exists()


def test_non_finite_values_reach_tensorboard_as_numbers(small_plan):
    import math

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from runner.train.tracker_tensorboard import TensorBoard
    from runner.train.trackers import Trackers

    plan, root = small_plan
    trackers = Trackers(None, [TensorBoard(plan, root / "tb-run", None)])
    # metrics.jsonl writes a non-finite loss as text; text that is no number is not a metric.
    trackers.log({"train/loss": "nan", "train/grad_norm": 2.5, "train/note": "text"}, step=1)
    trackers.finish()
    events = EventAccumulator(str(root / "tb-run" / "tensorboard"))
    events.Reload()
    assert math.isnan(events.Scalars("train/loss")[0].value) and events.Scalars("train/grad_norm")[0].value == 2.5
    assert "train/note" not in events.Tags()["scalars"]
