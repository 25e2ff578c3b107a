"""Parity: SFT with LoRA through runner gives the same per-step losses as a hand-written PEFT +
PyTorch loop over the same rows, masks and hyper-parameters.

The reference shares nothing with runner's training path but the pipeline's rows: it runs each
row alone (no padding, no collator), computes the shifted cross-entropy itself, normalises by the
trained tokens of the whole accumulation window, clips, and steps AdamW under a hand-written
linear warmup/decay. Every optimizer step sees all 8 rows (2 micro batches of 4), so the loss is
independent of the sampler's order."""

import json

import torch
import torch.nn.functional as F

from runner import data as pipeline
from runner.plan.resolve import make_plan
from runner.train.command import run
from tests.tiny_model import save_tiny_model, write_config

torch.set_num_threads(1)

SEED, LR, WD, WARMUP, STEPS, CLIP = 42, 1e-2, 0.01, 2, 6, 1.0
TARGETS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def reference_losses(model_dir, rows) -> list[float]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    set_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    trained = sum(sum(1 for t in r["labels"][1:] if t != -100) for r in rows)
    losses = []
    for step in range(STEPS):
        scale = step / WARMUP if step < WARMUP else (STEPS - step) / (STEPS - WARMUP)
        for group in optimizer.param_groups:
            group["lr"] = LR * scale
        total = 0.0
        for r in rows:
            ids, labels = torch.tensor([r["input_ids"]]), torch.tensor([r["labels"]])
            logits = model(input_ids=ids).logits[0, :-1]
            loss = F.cross_entropy(logits.float(), labels[0, 1:], ignore_index=-100, reduction="sum")
            (loss / trained).backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(total / trained)
    return losses


def test_sft_lora_losses_match_a_hand_written_peft_loop(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    cfg = write_config(
        tmp_path, model_dir,
        adapter={"kind": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        training={"max_steps": STEPS, "micro_batch_size": 4, "gradient_accumulation": 2, "learning_rate": LR,
                  "weight_decay": WD, "lr_scheduler": "linear", "warmup_steps": WARMUP, "max_grad_norm": CLIP,
                  "seed": SEED},
    )
    plan = make_plan(cfg)
    run_dir = run(plan)
    rows = list(pipeline.build_datasets(plan, pipeline.load_tokenizer(plan)).train)
    assert len(rows) == 8 and all(-100 in r["labels"] and any(t != -100 for t in r["labels"]) for r in rows)
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    runner_losses = [r["loss"] for r in logged if r.get("kind") == "train"]
    expected = reference_losses(model_dir, rows)
    assert len(runner_losses) == STEPS
    assert expected[-1] < expected[0]  # the reference itself learns, so the comparison means something
    torch.testing.assert_close(torch.tensor(runner_losses), torch.tensor(expected), rtol=2e-4, atol=2e-4)
