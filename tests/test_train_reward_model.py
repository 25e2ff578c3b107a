"""stage: rm end to end, as a user runs it: `runner train` on a slice of the shared preference data
(tiny random Llama, LoRA), then the run directory reloaded with AutoModelForSequenceClassification
(the score head comes from the adapter file), its pairwise accuracy in metrics, RUN_COMPLETE and the
model card, and `runner eval RUN_DIR` reporting the same number."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runner import data as pipeline
from runner.plan.resolve import make_plan
from tests.tiny_model import save_tiny_model, write_config

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
TRAIN_PAIRS = 16
# A reward model that learned its training pairs ranks chosen above rejected on nearly all of them; an
# untrained score head ranks about half.
MOST = 0.9


def runner_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "runner", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO, timeout=600)


def rm_config(tmp, model_dir, adapter=None, steps=30):
    return write_config(tmp, model_dir, stage="rm", adapter=adapter,
                        training={"max_steps": steps, "micro_batch_size": 8, "learning_rate": 1e-2, "eval_every": 10},
                        dataset={"num_samples": TRAIN_PAIRS + 4}, extra={"val_size": 4})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    model_dir = save_tiny_model(tmp / "model", hidden=48)
    config = rm_config(tmp, model_dir)
    done = runner_cli("train", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    return config, model_dir, tmp / "run", done


def scores(model, sequences):
    model.eval()
    with torch.no_grad():
        return [model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in sequences]


def train_rows(config):
    plan = make_plan(config)
    return pipeline.build_datasets(plan, pipeline.load_tokenizer(plan)).train


def test_reloaded_reward_model_ranks_chosen_above_rejected(trained):
    from transformers import AutoModelForSequenceClassification

    config, _, run_dir, _ = trained
    assert {"adapter_model.safetensors", "adapter_config.json", "RUN_COMPLETE"} <= {p.name for p in run_dir.iterdir()}
    adapter = json.loads((run_dir / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]
    model = AutoModelForSequenceClassification.from_pretrained(run_dir, num_labels=1)
    rows = train_rows(config)
    assert len(rows) == TRAIN_PAIRS
    chosen = scores(model, [r["prompt_input_ids"] + r["chosen_input_ids"] for r in rows])
    rejected = scores(model, [r["prompt_input_ids"] + r["rejected_input_ids"] for r in rows])
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(rows)
    assert accuracy >= MOST, f"chosen above rejected on {accuracy:.2f} of the training pairs"


def test_pairwise_accuracy_in_metrics_summary_and_card(trained):
    _, _, run_dir, done = trained
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert len(train) == 30 and all(0.0 <= r["accuracy"] <= 1.0 and "margin" in r for r in train)
    assert [r["step"] for r in evals] == [10, 20, 30, 30] and all("eval_accuracy" in r for r in evals)
    complete = json.loads((run_dir / "RUN_COMPLETE").read_text())
    assert complete["final_eval_accuracy"] == float(f"{evals[-1]['eval_accuracy']:.4g}")
    card = (run_dir / "README.md").read_text()
    assert f"pairwise accuracy on the eval split (chosen scored above rejected): {complete['final_eval_accuracy']}" in card
    assert "AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)" in card
    assert "runner generate" not in card
    assert "Map" not in done.stderr and "LOAD REPORT" not in done.stderr, done.stderr


def test_runner_eval_reports_the_pairwise_accuracy(trained):
    _, _, run_dir, _ = trained
    done = runner_cli("eval", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((run_dir / "eval" / "pairwise.json").read_text())
    complete = json.loads((run_dir / "RUN_COMPLETE").read_text())
    # the same eval split the training's final evaluation scored, through the reloaded model
    assert result["split"] == "eval" and result["pairs"] == 4
    assert result["accuracy"] == pytest.approx(complete["final_eval_accuracy"], abs=1e-3)
    assert f"{result['accuracy']:.4f}" in done.stdout.splitlines()[-1]
    assert "## Pairwise accuracy" in (run_dir / "README.md").read_text()
    refused = runner_cli("eval", str(run_dir), "--tasks", "arc_easy")
    assert refused.returncode == 2 and "reward model" in refused.stderr and "Traceback" not in refused.stderr


def test_full_fine_tune_reloads_without_naming_the_label_count(tmp_path, trained):
    from transformers import AutoModelForSequenceClassification

    from runner.evaluate.reward_model import load_reward_model, score
    from runner.train.command import run

    _, model_dir, _, _ = trained
    run_dir = run(make_plan(rm_config(tmp_path, model_dir, adapter={"kind": "full"}, steps=4)))
    assert not (run_dir / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(run_dir)
    assert model.config.num_labels == 1
    reward = load_reward_model(run_dir)
    ids = [[5, 6, 7, 8], [9, 10]]
    assert score(reward, ids) == pytest.approx(scores(model, ids), abs=1e-5)


def test_language_model_commands_refuse_a_reward_model(trained):
    _, _, run_dir, _ = trained
    for args in (("generate", str(run_dir), "-p", "Hello"), ("merge", str(run_dir))):
        done = runner_cli(*args)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "is a reward model (stage rm)" in done.stderr and "Traceback" not in done.stderr
    assert not (run_dir / "merged").exists()
