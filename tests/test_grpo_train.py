"""Stage grpo trained for real (`python -m runner train` in a subprocess): a tiny model rewarded by a
reward model built here (a sequence classifier saved to a folder), a built-in and a user function
from a file, killed with SIGKILL mid-run and resumed; a user reward with the wrong signature stops the
run before its first step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import rundir
from tests.tiny_model import save_tiny_model, write_config

REPO = Path(__file__).resolve().parents[1]
STEPS = 6
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _train(config, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "runner", "train", str(config)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def save_reward_model(directory: Path) -> Path:
    """A tiny random sequence classifier with the tiny tokenizer: what a stage-rm run holds."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tests.tiny_model import tiny_config
    from tests.tiny_tokenizer import save_tiny_tokenizer, tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = tiny_config("llama", vocab_size=len(tok), num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(directory)
    save_tiny_tokenizer(directory)
    return directory


def save_reward_adapter(base: Path, directory: Path) -> Path:
    """A LoRA adapter on a sequence classifier with its trained score head (modules_to_save), as a
    stage-rm run with LoRA saves it: the folder has no config.json, its base is named inside."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from tests.tiny_tokenizer import save_tiny_tokenizer

    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    peft = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"],
                                            modules_to_save=["score"]))
    with torch.no_grad():  # a head unlike the base's: the adapter's own head must be the one scoring
        for name, param in peft.named_parameters():
            if "modules_to_save" in name:
                param.mul_(-3.0)
    peft.save_pretrained(directory)
    save_tiny_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    model = save_tiny_model(root / "model")
    rm = save_reward_model(root / "rm")
    save_reward_adapter(rm, root / "rm_lora")
    (root / "mine.py").write_text(
        "def vowels(completions, reference, **kwargs):\n"
        "    # a user reward with a dataset column: the share of vowels, 0 where the row has no reference\n"
        "    return [sum(ch in 'aeiou' for ch in c) / max(len(c), 1) if r else 0.0\n"
        "            for c, r in zip(completions, reference)]\n"
        "def positional(completions):\n    return [0.0 for _ in completions]\n")
    return root, model, rm


def _config(root, model, name, rewards, output=None, training=None):
    grpo = {"num_generations": 4, "max_completion_length": 8, "beta": 0.05, "rewards": rewards}
    return write_config(root / name, model, stage="grpo", name=name,
                        training={"max_steps": STEPS, "micro_batch_size": 4, "gradient_accumulation": 2,
                                  "grpo": grpo, **(training or {})},
                        extra={"output": {"dir": str(root / name / "run"), **(output or {})}})


def test_grpo_with_a_reward_model_resumes_after_kill_9(tiny):
    root, model, rm = tiny
    rewards = [{"reward_model": str(rm)}, {"reward_model": str(root / "rm_lora"), "name": "rm_lora", "weight": 0.0},
               {"function": str(root / "mine.py") + ":vowels", "weight": 0.5},
               {"function": "soft_overlong", "args": {"cache": 2}}]
    config = _config(root, model, "resume", rewards, output={"save_every": 2})
    run = root / "resume" / "run"
    proc = _train(config)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(p.name == "checkpoint-2" for p in rundir.complete_checkpoints(run)):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.communicate()[1][-2000:]
    proc.kill()  # SIGKILL: no handler, no finally
    proc.wait()
    assert not (run / "RUN_COMPLETE").exists()

    out, err = _train(config).communicate(timeout=600)
    assert "resum" in err.lower(), err[-2000:]
    assert (run / "RUN_COMPLETE").is_file(), err[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1)), "one metrics row per step, none twice"
    assert json.loads((run / "plan.json").read_text())["runtime"]["total_steps"] == STEPS
    last = train[-1]
    for name in ("reward_model", "rm_lora", "vowels", "soft_overlong"):
        assert f"rewards/{name}/mean" in last and f"rewards/{name}/std" in last
    # the total is the weighted sum of the rewards' means
    total = last["rewards/reward_model/mean"] + 0.5 * last["rewards/vowels/mean"] + last["rewards/soft_overlong/mean"]
    assert last["reward"] == pytest.approx(total, abs=1e-4)
    assert "kl" in last and "completions/mean_length" in last and "clip_ratio/region_mean" in last
    assert all(r["tokens"] > 0 for r in train) and train[-1]["tokens"] > train[0]["tokens"]
    # the reward model scores prompt + completion with its own head: not a constant
    assert len({round(r["rewards/reward_model/mean"], 6) for r in train}) > 1
    # the adapter's own score head (3 x the base's, negated) scores, not the base's
    for r in train:  # LoRA's B starts at zero: the merged body is the base, the head is -3 x the base's
        assert r["rewards/rm_lora/mean"] == pytest.approx(-3 * r["rewards/reward_model/mean"], rel=1e-3, abs=1e-4)
    assert (run / "loss.png").is_file() and (run / "adapter_model.safetensors").is_file()


def test_a_reward_with_the_wrong_signature_stops_before_the_first_step(tiny):
    root, model, _ = tiny
    config = _config(root, model, "badsig", [{"function": str(root / "mine.py") + ":positional"}])
    proc = _train(config)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-2000:]
    assert "must accept **kwargs" in err and "training.grpo.rewards[0]" in err and "Traceback" not in err
    metrics = root / "badsig" / "run" / "metrics.jsonl"
    assert not metrics.exists() or not [line for line in metrics.read_text().splitlines() if '"train"' in line]


def _peak_rss_gib(root, model, name, paged: bool) -> float:
    """runner train of a 2-step GRPO run in a wrapper that reports its own peak resident memory."""
    config = _config(root, model, name, [],
                     training={"max_steps": 2, "grpo": {"num_generations": 4, "max_completion_length": 8,
                                                        "beta": 0.0, "continuous_batching": paged,
                                                        "rewards": [{"function": "format", "args": {"pattern": "a"}}]}})
    wrapper = ("import resource, runpy, sys\nsys.argv = ['runner', 'train', sys.argv[1]]\n"
               "try:\n    runpy.run_module('runner', run_name='__main__')\nfinally:\n"
               "    print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", wrapper, str(config)], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=600)
    run = root / name / "run"
    assert (run / "RUN_COMPLETE").is_file(), proc.stderr[-3000:]
    train = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert [r["step"] for r in train] == [1, 2] and all(r["completions/mean_length"] > 0 for r in train)
    return int(proc.stderr.rsplit("MAXRSS", 1)[1].split()[0]) / 2**20


def test_continuous_batching_sizes_its_cache_to_one_generation_round(tiny):
    """With training.grpo.continuous_batching the KV cache holds one generation round (completions x
    max_length), not TRL's default of half the free memory: on a CPU that default took half the
    machine's RAM per process (12 GB on a 24 GB machine) and got a second run killed for memory.
    The same run generating without it is the yardstick: a cache of one round adds little (seen: +0.5
    to +2.3 GiB of allocator and thread overhead), TRL's default half of the machine's memory."""
    root, model, _ = tiny
    plain = _peak_rss_gib(root, model, "plain", paged=False)
    paged = _peak_rss_gib(root, model, "paged", paged=True)
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    allowed = max(machine / 5, 1.0)  # well under the half TRL's default takes
    assert paged < plain + allowed, (f"peak RSS {paged:.1f} GiB against {plain:.1f} without continuous batching "
                                     f"(machine {machine:.0f} GiB)")
