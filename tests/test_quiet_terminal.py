"""A quiet terminal: a run prints runner's own lines (progress, parameter counts, where the run is)
and nothing from the libraries underneath, unless --debug asks for them. The quickstart runs for
real here (the SmolLM2 GGUF from its package, `python -m runner train`), and every line it prints
must match the allow-list below."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_model import save_tiny_model, write_config

REPO = Path(__file__).resolve().parents[1]

# Every line runner itself prints on a plain quickstart run. tqdm redraws its bar with "\r": each
# redraw is checked as a line of its own.
RUNNER_LINES = [
    r"train: +\d+%\|[^|]*\| *\d+/\d+ \[[^\]]*\]",  # metrics.py's progress bar
    r"trainable params: [\d,]+ / total [\d,]+ \(\d+\.\d+%\)",  # adapters.print_parameters
    r"finished: \d+ steps?, final train loss \S+(, eval loss \S+)?",  # train.run's summary
    r"run directory: \S+",
]


def library_lines(text: str) -> list[str]:
    lines = [part.strip() for line in text.splitlines() for part in line.split("\r")]
    return [line for line in lines if line and not any(re.fullmatch(p, line) for p in RUNNER_LINES)]


def runner_cli(*args, env_extra=None, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY")}
    # WANDB_MODE=offline with tracking off once made transformers print "[INFO] Running in WANDB offline mode".
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="offline",
               **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_allow_list_catches_library_lines():
    noise = ("Failed to load CPU gemm_4bit_forward from kernels-community: ...\n"
             "Converting and de-quantizing GGUF tensors...:   5%|▍  | 13/272 [00:01<00:20, 12.1it/s]\r"
             "train:  50%|█████     | 1/2 [00:03<00:03,  3.10s/step, loss=2.1]\n"
             "/x/transformers/training_args.py:1541: FutureWarning: `gradient_checkpointing` is deprecated\n"
             "[INFO] Running in WANDB offline mode\n"
             "run directory: outputs/quickstart\n")
    assert library_lines(noise) == [
        "Failed to load CPU gemm_4bit_forward from kernels-community: ...",
        "Converting and de-quantizing GGUF tensors...:   5%|▍  | 13/272 [00:01<00:20, 12.1it/s]",
        "/x/transformers/training_args.py:1541: FutureWarning: `gradient_checkpointing` is deprecated",
        "[INFO] Running in WANDB offline mode",
    ]


@pytest.mark.slow
def test_quickstart_prints_only_runner_lines_and_fits_one_screen(tmp_path):
    out = runner_cli("train", "cookbook/quickstart.yaml", f"output.dir={tmp_path / 'quickstart'}",
                     f"data.cache_dir={tmp_path / 'cache'}", "training.max_steps=2", "training.micro_batch_size=2")
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert library_lines(text) == [], text[-4000:]
    assert len(text.splitlines()) <= 8, text
    assert "finished: 2 steps, final train loss" in text


def test_debug_lets_the_library_lines_through(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 1})
    quiet = runner_cli("train", str(cfg))
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert library_lines(quiet.stdout + quiet.stderr) == []
    loud = runner_cli("train", str(cfg), "output.overwrite=true", "--debug")
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "Loading weights" in loud.stderr  # transformers' own bar, shown only with --debug
