"""Runs that would train nothing useful are refused before the model loads (exit 2, the reason):
a template the tokenizer cannot train (the `lint --deep` check), most rows without a trained token
or end-of-turn, every sample's end-of-turn cut by truncation (unless sequence.allow_all_truncated).
Truncation and drops above a threshold are warnings printed at the start, kept in plan.json and
shown by `runner plan` from the data cache entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_model import save_tiny_model, write_config

REPO = Path(__file__).resolve().parents[1]
LOADED = "trainable params"  # printed once the model is loaded and wrapped


def runner(*argv, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "runner", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_smollm2_with_the_llama3_template_is_refused_before_the_model_loads(tmp_path):
    overrides = ["template.name=llama3", f"output.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}",
                 "training.max_steps=1"]
    for command in ("train", "preprocess"):
        done = runner(command, str(REPO / "cookbook" / "quickstart.yaml"), *overrides)
        assert done.returncode == 2, done.stderr[-3000:]
        assert "template: error: template llama3 writes <|end_header_id|>, <|eot_id|>" in done.stderr
        assert "runner lint --deep" in done.stderr
        assert LOADED not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "RUN_COMPLETE").exists()


def test_most_rows_without_a_trained_token_are_refused(tmp_path, model_dir):
    cfg = write_config(tmp_path, model_dir, sequence={"max_length": 24, "allow_all_truncated": False},
                       training={"max_steps": 2})
    done = runner("train", str(cfg))
    assert done.returncode == 2, done.stderr[-3000:]
    assert ("datasets: error: 6 of 8 train rows (75%) have no trained token left once cut to sequence.max_length=24"
            in done.stderr)
    assert LOADED not in done.stderr


def test_a_template_that_trains_no_end_of_turn_in_most_rows_is_refused(tmp_path, model_dir, capsys):
    """The probe conversation of the lint check ends its turns; the real rows never do."""
    from runner.cli import main

    template = tmp_path / "sly.jinja"
    template.write_text(
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}{% if m['role'] == 'assistant' %}"
        "{% generation %}{{ m['content'] }}{% if 'probe' in m['content'] %}{{ '<|im_end|>' }}{% endif %}"
        "{% endgeneration %}{% else %}{{ m['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    cfg = write_config(tmp_path, model_dir, sequence={"max_length": 512},
                       extra={"template": {"name": "jinja", "jinja": str(template)}})
    assert main(["lint", "--deep", str(cfg)]) == 0  # the probe alone cannot see it
    capsys.readouterr()
    assert main(["preprocess", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"template file:{template} trains no end-of-turn token in 8 of 8 train rows (100%)" in err


def test_truncation_warnings_start_the_run_stay_in_plan_json_and_show_in_plan(tmp_path, model_dir):
    cfg = write_config(tmp_path, model_dir, training={"max_steps": 2})
    before = runner("plan", str(cfg))
    assert before.returncode == 0 and "prepared data: not prepared for this data_hash yet" in before.stdout
    done = runner("train", str(cfg))
    assert done.returncode == 0, done.stderr[-3000:]
    warning = ("warning: 4 of 8 train rows (50%) are truncated (4 of them lose their end-of-turn token) at "
               "sequence.max_length=128")
    assert warning in done.stderr
    assert done.stderr.index(warning) < done.stderr.index(LOADED), "said at the start, before the model loads"
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["launch"]["data_stats"]["warnings"] == [warning[len("warning: "):]]
    after = runner("plan", str(cfg))
    assert after.returncode == 0
    assert "prepared data: " in after.stdout and "    " + warning in after.stdout
    assert "eot_cut: 4, truncated: 4" in after.stdout


def test_every_sample_losing_its_end_of_turn_is_refused_unless_allowed(tmp_path, model_dir):
    cfg = write_config(tmp_path, model_dir, sequence={"max_length": 40, "allow_all_truncated": False},
                       training={"max_steps": 2})
    done = runner("train", str(cfg))
    assert done.returncode == 2, done.stderr[-3000:]
    assert ("every one of the 7 train samples loses its end-of-turn token to truncation at sequence.max_length=40"
            in done.stderr)
    assert "sequence.allow_all_truncated: true" in done.stderr and LOADED not in done.stderr
    shown = runner("plan", str(cfg))
    assert "error (train refuses): every one of the 7 train samples" in shown.stdout
    allowed = runner("preprocess", str(cfg), "sequence.allow_all_truncated=true")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "warning: 8 of 8 train rows (100%) are truncated (7 of them lose their end-of-turn token)" in allowed.stderr
    assert "cache: hit" in allowed.stderr, "the switch decides whether a run starts, not what the data holds"
