"""`runner launch` with real processes: the supervisor (runner.launch._supervise) around torchrun and
a stand-in worker (tests/fixtures/workers/sleepy.py) for signals and exit codes, then the real
command: a broken config or a refused run directory starts no worker, a worker's own exit code comes
back, SIGTERM reaches the training workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import runner.launch as launch
from runner.cli import main
from runner.launch import combine_exit_codes, worker_targets

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "configs"
SUPERVISE = ("import json, sys; from runner.launch import _supervise; "
             "sys.exit(_supervise(json.loads(sys.argv[1]), {'NCCL_NVLS_ENABLE': '0'}, local_ranks=[0, 1]))")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(module: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", "-m", module]


def worker_env(tmp_path, **extra) -> dict:
    env = {**os.environ, "SLEEPY_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def wait_for(paths, timeout=90.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(Path(p).exists() for p in paths):
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the launcher ended early with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {paths}")


def start_supervisor(tmp_path, argv, **env):
    return subprocess.Popen([sys.executable, "-c", SUPERVISE, json.dumps(argv)], cwd=REPO, text=True,
                            env=worker_env(tmp_path, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# --- pure parts ---

def test_worker_targets_spare_the_launcher_and_find_each_workers_group():
    # torchrun (100, its own group 100) -> workers 101, 102 in their own sessions -> a data loader 103
    table = {100: (1, 100), 101: (100, 101), 102: (100, 102), 103: (101, 101), 104: (100, 100)}
    assert worker_targets(100, table) == ([101, 102], [])
    # Accelerate's one-process launcher: the worker stays in the launcher's group
    assert worker_targets(200, {200: (1, 200), 201: (200, 200), 202: (201, 200)}) == ([], [201, 202])
    assert worker_targets(300, {300: (1, 300)}) == ([], [300])  # nothing started yet: the launcher


@pytest.mark.parametrize("launcher,codes,received,ranks,expected", [
    (1, {0: 0, 1: 7}, [], [0, 1], 7),          # a worker's own code, not torchrun's 1
    (1, {0: 3, 1: 7}, [], [0, 1], 3),          # the lowest failing rank
    (0, {0: 0, 1: 0}, [], [0, 1], 0),
    (1, {0: 0, 1: 0}, [], [0, 1], 0),          # every worker finished: success, whatever the launcher says
    (1, {0: 0}, [], [0, 1], 1),                # rank 1 silent (killed): the launcher's failure
    (1, {}, [signal.SIGTERM], [0, 1], 143),    # stopped by our SIGTERM, nobody reported: 128 + 15
    (1, {0: 75, 1: 75}, [signal.SIGTERM], [0, 1], 75),  # the workers' own stop code wins
    (-9, {}, [], None, 137),                   # a plain worker killed by SIGKILL
])
def test_combine_exit_codes(launcher, codes, received, ranks, expected):
    assert combine_exit_codes(launcher, codes, received, ranks) == expected


# --- the supervisor with stand-in workers under torchrun ---

def test_a_workers_own_exit_code_comes_back(tmp_path, capsys):
    env = {"SLEEPY_DIR": str(tmp_path), "SLEEPY_MODE": "exit:1:7", "OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        code = launch._supervise(torchrun("tests.fixtures.workers.sleepy"), {}, local_ranks=[0, 1])
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert code == 7, "torchrun itself exits 1; the worker's code is what comes back"
    assert "rank 1 exited with code 7" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_supervisor_reaches_both_workers_once(tmp_path, signum):
    # The workers finish with 0 after the signal: a non-zero code from the first one to finish would
    # make torchrun SIGTERM the other (its own rule), which is not what this test is about.
    proc = start_supervisor(tmp_path, torchrun("tests.fixtures.workers.sleepy"), SLEEPY_GRACE=1.5,
                            SLEEPY_SIGNAL_CODE=0)
    wait_for([tmp_path / "ready-rank0", tmp_path / "ready-rank1"], proc=proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"signals-rank{rank}.json").read_text())
        # Once: torchrun was spared, so it did not add its own SIGTERM during the workers' grace time.
        assert got == [signum], (rank, got, err[-2000:])
    assert proc.returncode == 0, "every worker finished with 0 after the signal: " + err[-2000:]
    for rank in (0, 1):
        env = json.loads((tmp_path / f"env-rank{rank}.json").read_text())
        assert env["NCCL_NVLS_ENABLE"] == "0" and env["WORLD_SIZE"] == "2"


def test_a_second_sigint_stops_everything_at_once(tmp_path):
    proc = start_supervisor(tmp_path, torchrun("tests.fixtures.workers.sleepy"), SLEEPY_GRACE=60)
    wait_for([tmp_path / "ready-rank0", tmp_path / "ready-rank1"], proc=proc)
    pids = [int((tmp_path / f"ready-rank{r}").read_text()) for r in (0, 1)]
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None, "the first Ctrl-C lets the workers finish their step"
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert time.monotonic() - started < 15
    assert proc.returncode == 128 + signal.SIGINT
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]


def test_a_killed_worker_is_named(tmp_path):
    proc = start_supervisor(tmp_path, torchrun("tests.fixtures.workers.sleepy"), SLEEPY_MODE="kill:1", SLEEPY_GRACE=0.2)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode != 0
    assert "rank 1 ended without an exit code" in err


def test_one_plain_process_gets_the_signal_itself(tmp_path):
    proc = start_supervisor(tmp_path, [sys.executable, "-m", "tests.fixtures.workers.sleepy"], SLEEPY_GRACE=0.2)
    wait_for([tmp_path / "ready-rank0"], proc=proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert json.loads((tmp_path / "signals-rank0.json").read_text()) == [signal.SIGTERM]
    assert proc.returncode == 75


# --- the real command ---

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tests.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def write_cfg(tmp_path, data_file: Path, model: Path = FIXTURES / "tiny-model", **sections) -> Path:
    cfg = {"name": "launched", "model": {"path": str(model)},
           "datasets": [{"path": str(data_file), "format": "alpaca"}],
           "data": {"cache_dir": str(tmp_path / "cache")}, "output": {"dir": str(tmp_path / "run")},
           "training": {"max_steps": 2, "precision": "fp32"}, **sections}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def no_workers(monkeypatch):
    """Fails the test if `runner launch` starts any process."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a worker was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(launch.subprocess, "Popen", refuse)


def test_a_broken_config_starts_no_worker(tmp_path, capsys, no_workers):
    cfg = write_cfg(tmp_path, FIXTURES / "data" / "alpaca_small.json", distributed={"backend": "fsdpp"})
    assert main(["launch", str(cfg), "--cpu", "--num-processes", "2"]) == 2
    err = capsys.readouterr().err
    assert "distributed.backend" in err and "cfg.yaml:" in err, err
    assert not (tmp_path / "run").exists()


def test_a_refused_run_directory_starts_no_worker(tmp_path, capsys, no_workers):
    cfg = write_cfg(tmp_path, FIXTURES / "data" / "alpaca_small.json")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert main(["launch", str(cfg), "--cpu", "--num-processes", "2"]) == 2
    assert "holds no runner run" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"], "nothing written into it"


def test_a_finished_run_is_not_started_again(tmp_path, capsys, no_workers):
    from runner import rundir
    from runner.plan.resolve import make_plan

    cfg = write_cfg(tmp_path, FIXTURES / "data" / "alpaca_small.json", distributed={"num_processes": 2})
    run = tmp_path / "run"
    run.mkdir()
    rundir.write_plan(run, make_plan(cfg))
    rundir.mark_complete(run, {})
    assert main(["launch", str(cfg), "--cpu"]) == 0
    assert "already holds this finished run" in capsys.readouterr().err
    # --num-processes is part of the plan: another count is another run, refused without --overwrite.
    assert main(["launch", str(cfg), "--cpu", "--num-processes", "3"]) == 2
    assert "distributed.num_processes: 2 -> 3" in capsys.readouterr().err


def test_a_broken_config_end_to_end(tmp_path):
    cfg = write_cfg(tmp_path, FIXTURES / "data" / "alpaca_small.json", training={"learning_rate": "fast"})
    out = subprocess.run([sys.executable, "-m", "runner", "launch", str(cfg), "--cpu", "--num-processes", "2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2
    assert "training.learning_rate" in out.stderr and "Traceback" not in out.stderr
    assert "torch.distributed.run" not in out.stderr and not (tmp_path / "run").exists()


def test_a_workers_data_error_exit_code_comes_back(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "hi", "output": "hello"},\n {"instruction": "oops", "output": ')
    cfg = write_cfg(tmp_path, bad)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "runner", "launch", str(cfg), "--cpu", "--num-processes", "2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())})
    assert out.returncode == 2, out.stderr[-3000:]
    assert "bad.json" in out.stderr and "rank 0 exited with code 2" in out.stderr
    assert (tmp_path / "run" / "accelerate_config.yaml").is_file()
    assert time.monotonic() - started < 300


@pytest.mark.slow
def test_sigterm_to_runner_launch_stops_both_training_workers(tmp_path, tiny_model):
    from runner.launch import _processes

    cfg = write_cfg(tmp_path, FIXTURES / "data" / "alpaca_small.json", model=tiny_model,
                    training={"max_steps": 100000, "precision": "fp32", "micro_batch_size": 1},
                    tracking={"log_every": 1, "progress_bar": False})
    proc = subprocess.Popen([sys.executable, "-m", "runner", "launch", str(cfg), "--cpu", "--num-processes", "2"],
                            cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())})
    wait_for([tmp_path / "run" / "metrics.jsonl"], timeout=240, proc=proc)
    table = _processes()
    launchers = [pid for pid, (ppid, _) in table.items() if ppid == proc.pid]
    workers = [pid for pid, (ppid, pgid) in table.items() if ppid in launchers and pgid == pid]
    assert len(workers) == 2, "torchrun's two workers, each in its own session"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err[-2000:]
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} survived"
