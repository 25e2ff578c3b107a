"""Run-directory safety (issue 17): runner deletes only what it made, changes the directory only
once data and model have loaded, gives a replaced run back when its replacement stops before
training, and lets one launch at a time own a directory.

- overwrite (config, --overwrite, --smoke) never touches a folder without runner's marker; names
  are folder names; output.dir apart from the model and the data; a file or a too-long name as
  output.dir is an error, not a traceback.
- a launch that dies at startup (bad row) leaves nothing that blocks the same command; a finished
  run replaced with --overwrite comes back when the new launch stops before its first step, at
  once or (after a SIGKILL) at the next launch.
- a second real process on a directory in use is refused naming the first; a SIGKILLed holder
  leaves no lock behind."""

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainerCallback

from runner import rundir
from runner.cli import main
from runner.errors import ConfigErrors, UserError
from runner.plan.resolve import make_plan
from runner.train.command import run
from tests.tiny_model import REPO, save_tiny_model, write_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def snapshot(root: Path) -> dict:
    """Every file under root with its bytes' digest (the folder as a user would check it)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".runner-lock"}


class FailBeforeFirstStep(TrainerCallback):
    """Stands for any failure after the directory is prepared and before a step is trained
    (out of memory at step 1, a broken kernel)."""

    def on_step_begin(self, args, state, control, **kwargs):
        raise RuntimeError("failed before the first step")


# --- item 1: overwrite removes only what runner made ---

def test_overwrite_never_touches_a_folder_runner_did_not_make(tmp_path, model_dir, capsys):
    project = tmp_path / "run"
    project.mkdir()
    for name, text in {"README.md": "my project", "config.json": "{}", "model.safetensors": "weights",
                       "tokenizer.json": "{}", "notes.txt": "mine"}.items():
        (project / name).write_text(text)
    (project / "checkpoints").mkdir()
    (project / "checkpoints" / "keep.bin").write_text("mine too")
    before = snapshot(project)
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 2})
    for argv in (["train", str(cfg), "--overwrite"], ["train", str(cfg), "output.overwrite=true"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "holds no runner run" in err and "README.md" in err and "with or without overwrite" in err, err
    assert snapshot(project) == before


def test_overwrite_in_a_runner_folder_keeps_foreign_files_and_says_so(tmp_path, model_dir, capsys):
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 2})
    run_dir = run(make_plan(cfg))
    assert json.loads((run_dir / rundir.OWNER_MARKER).read_text())["name"] == "tiny"
    (run_dir / "notes.txt").write_text("mine")
    first = (run_dir / rundir.RUN_MARKER).read_text()
    capsys.readouterr()
    run(make_plan(cfg, ["training.learning_rate=0.001"]), overwrite=True)
    err = capsys.readouterr().err
    assert "kept there, not runner's: notes.txt" in err, err
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert (run_dir / rundir.RUN_MARKER).read_text() != first
    assert not (run_dir / rundir.PREVIOUS).exists(), "the replaced run is deleted once the new one trained"


@pytest.mark.parametrize("name", ["..", ".", "a/b", "x" * 300])
def test_names_are_folder_names(tmp_path, model_dir, name):
    cfg = write_config(tmp_path, model_dir, extra={"output": {"dir": str(tmp_path / "outputs" / "{name}"),
                                                              "overwrite": True}})
    cfg.write_text(cfg.read_text().replace("name: tiny", f"name: '{name}'"))
    with pytest.raises(ConfigErrors) as err:
        make_plan(cfg)
    assert "tiny.yaml:1:" in str(err.value) and "name:" in str(err.value), str(err.value)
    assert "x" * 100 not in str(err.value), "a long value is not echoed whole"
    assert not (tmp_path / "outputs").exists()


def test_a_name_taken_from_the_file_name_is_checked_too(tmp_path, model_dir):
    cfg = write_config(tmp_path, model_dir, extra={"output": {"dir": str(tmp_path / "out" / "{name}")}})
    data = {k: v for k, v in yaml.safe_load(cfg.read_text()).items() if k != "name"}
    dots = tmp_path / "...yaml"  # its stem is ".."
    dots.write_text(json.dumps(data))
    with pytest.raises(ConfigErrors, match="name taken from the config file's name"):
        make_plan(dots)


@pytest.mark.parametrize("key", ["model", "data_folder"])
def test_output_dir_apart_from_the_model_and_the_data(tmp_path, model_dir, key, capsys):
    import shutil

    model = shutil.copytree(model_dir, tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(REPO.parent / "shared" / "data" / "identity.json", data / "identity.json")
    cfg = write_config(tmp_path / "cfg", model, dataset={"path": str(data / "identity.json")})
    target, other = (model, "model.path") if key == "model" else (data, "datasets.0.path")
    before = snapshot(target)
    assert main(["train", str(cfg), f"output.dir={target}", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "output.dir" in err and other in err and "Traceback" not in err, err
    assert snapshot(target) == before


def test_output_dir_that_is_a_file_or_too_long_is_an_error(tmp_path, model_dir, capsys):
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 2})
    (tmp_path / "afile").write_text("x")
    assert main(["train", str(cfg), f"output.dir={tmp_path / 'afile'}"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["train", str(cfg), f"output.dir={tmp_path / ('d' * 300)}"]) == 2
    err = capsys.readouterr().err
    assert "300 bytes" in err and "Traceback" not in err
    # Past the resolver (a plan built elsewhere): the run directory's own checks still say it.
    plan = make_plan(cfg)
    elsewhere = dataclasses.replace(plan.output, dir=str(tmp_path / ("e" * 300) / "run"))
    with pytest.raises(UserError, match="longer than the filesystem allows"):
        run(dataclasses.replace(plan, output=elsewhere))
    elsewhere = dataclasses.replace(plan.output, dir=str(tmp_path / "afile"))
    with pytest.raises(UserError, match="is a file"):
        run(dataclasses.replace(plan, output=elsewhere))


# --- item 2: nothing changes before data and model load; a replaced run comes back ---

def test_a_startup_that_dies_leaves_nothing_that_blocks_the_rerun(tmp_path, model_dir, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "hi", "output": "hello"},\n {"instruction": "oops", "output": ')
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 2}, dataset={"path": str(bad), "num_samples": None})
    assert main(["train", str(cfg)]) == 2
    assert "bad.json" in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "a launch that never trained leaves no folder it made"
    good = write_config(tmp_path, model_dir, training={"max_steps": 2})
    assert main(["train", str(good)]) == 0, capsys.readouterr().err


def test_overwrite_keeps_the_finished_run_until_the_new_one_trains(tmp_path, model_dir, capsys):
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 2})
    run_dir = run(make_plan(cfg))
    finished = snapshot(run_dir)
    capsys.readouterr()
    with pytest.raises(RuntimeError, match="before the first step"):
        run(make_plan(cfg, ["training.learning_rate=0.001"]), overwrite=True, callbacks=[FailBeforeFirstStep()])
    err = capsys.readouterr().err
    assert f"the earlier run in {run_dir} is back in place" in err, err
    assert snapshot(run_dir) == finished
    assert run(make_plan(cfg)) == run_dir and snapshot(run_dir) == finished  # still this finished run


KILLED_CHILD = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from transformers import TrainerCallback
from runner.plan.resolve import make_plan
from runner.train.command import run

class Die(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

run(make_plan(sys.argv[1], ["training.learning_rate=0.001"]), overwrite=True, callbacks=[Die()])
"""


def child_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}


def test_a_killed_overwrite_gives_the_run_back_at_the_next_launch(tmp_path, model_dir, capsys):
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 2})
    run_dir = run(make_plan(cfg))
    finished = snapshot(run_dir)
    out = subprocess.run([sys.executable, "-c", KILLED_CHILD, str(cfg)], cwd=REPO, env=child_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert (run_dir / rundir.PREVIOUS / rundir.RUN_MARKER).is_file(), "killed while the old run was set aside"
    capsys.readouterr()
    assert main(["train", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "is back in place" in err and "already holds this finished run" in err, err
    assert snapshot(run_dir) == finished


def test_sigterm_while_loading_leaves_the_finished_run_in_place(tmp_path, model_dir, capsys):
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 2})
    run_dir = run(make_plan(cfg))
    finished = snapshot(run_dir)
    proc = subprocess.Popen([sys.executable, "-m", "runner", "train", str(cfg), "training.learning_rate=0.001",
                             "--overwrite"], cwd=REPO, env=child_env(), stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # judged: it goes on to load the data and the model
        if "overwriting the earlier run" in line:
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGTERM
    assert snapshot(run_dir) == finished, "nothing changes while the data and the model load"
    capsys.readouterr()
    assert main(["train", str(cfg)]) == 0
    assert "already holds this finished run" in capsys.readouterr().err
    assert snapshot(run_dir) == finished


# --- item 3: one owner per run directory ---

SLOW_CHILD = """
import sys, time
import torch
torch.set_num_threads(1)
from transformers import Trainer
step = Trainer.training_step
def slow(self, *a, **k):
    time.sleep(0.2)
    return step(self, *a, **k)
Trainer.training_step = slow
from runner.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
"""


def test_a_second_launch_is_refused_naming_the_first_and_a_killed_one_leaves_no_lock(tmp_path, model_dir):
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 100000, "micro_batch_size": 1})
    run_dir = tmp_path / "run"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, "-c", SLOW_CHILD, str(cfg)], cwd=REPO, env=child_env(),
                                 stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while not (run_dir / "metrics.jsonl").is_file():
            assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
        for argv in ([str(cfg)], [str(cfg), "--overwrite"]):
            second = subprocess.run([sys.executable, "-m", "runner", "train", *argv], cwd=REPO, env=child_env(),
                                    capture_output=True, text=True, timeout=300)
            assert second.returncode == 2, second.stderr[-3000:]
            assert f"in use by another launch: pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None, "the first run goes on"
        assert (run_dir / "plan.json").is_file() and not (run_dir / rundir.PREVIOUS).exists()
    finally:
        first.kill()
        first.wait()
    # The holder died without any cleanup: its lock went with it.
    third = subprocess.run([sys.executable, "-m", "runner", "train", str(cfg), "training.max_steps=2"], cwd=REPO,
                           env=child_env(), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert (run_dir / rundir.RUN_MARKER).is_file()


@pytest.mark.slow
def test_overwrite_under_two_processes_replaces_the_run_once_and_keeps_foreign_files(tmp_path, model_dir):
    from tests.test_distributed_train import run_cli

    cfg = write_config(tmp_path, model_dir, training={"max_steps": 2, "micro_batch_size": 2},
                       extra={"distributed": {"backend": "ddp"}})
    run_dir = tmp_path / "run"
    launch = ["launch", cfg, "--cpu", "--num-processes", "2"]
    run_cli(launch)
    first = (run_dir / rundir.RUN_MARKER).read_text()
    (run_dir / "notes.txt").write_text("mine")
    _, err = run_cli([*launch, "training.learning_rate=0.001", "--overwrite"])
    assert "kept there, not runner's: notes.txt" in err
    assert (run_dir / rundir.RUN_MARKER).read_text() != first
    assert json.loads((run_dir / "plan.json").read_text())["training"]["learning_rate"] == 0.001
    assert (run_dir / "notes.txt").read_text() == "mine" and not (run_dir / rundir.PREVIOUS).exists()
    assert [p.name for p in run_dir.glob(".runner-previous*")] == []
