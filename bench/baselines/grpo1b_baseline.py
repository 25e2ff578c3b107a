"""Hand-written GRPO baseline: TRL's GRPOTrainer as its documentation shows it, on the same model
folder, prompts, reward and settings as bench/scenarios/grpo1b.yaml. Generation with transformers'
continuous batching; LoRA through peft_config; conversational prompts (TRL applies the tokenizer's
chat template). Run unchanged by bench/grpo_bench.py through bench/grpo_probe.py.

    python bench/baselines/grpo1b_baseline.py MODEL_DIR DATA_JSON STEPS [--smoke] [--completion-length N]"""
from __future__ import annotations

import json
import sys

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer


def brevity(completion_ids, **kwargs):
    """The scenario's reward (bench/grpo_reward.py): the same on both sides."""
    return [1.0 - len(ids) / 256 for ids in completion_ids]


def main() -> None:
    model_dir, data_file, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    smoke = "--smoke" in sys.argv
    length = int(sys.argv[sys.argv.index("--completion-length") + 1]) if "--completion-length" in sys.argv else None
    gpu = torch.cuda.is_available()
    rows = json.loads(open(data_file).read())
    prompts = [[{"role": "user", "content": (r["instruction"] + "\n" + r.get("input", "")).strip()}] for r in rows]
    dataset = Dataset.from_dict({"prompt": prompts})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    dtype = torch.bfloat16 if gpu else torch.float32
    torch.manual_seed(0)
    if smoke:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    else:  # random init, as runner's model.random_init
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    args = GRPOConfig(
        output_dir="/tmp/grpo1b_baseline", max_steps=steps, per_device_train_batch_size=4 if smoke else 32,
        gradient_accumulation_steps=1, learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0,
        num_generations=4 if smoke else 8, max_completion_length=length or (8 if smoke else 256), temperature=1.0,
        beta=0.0, loss_type="dapo", bf16=gpu, use_cpu=not gpu, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, use_transformers_continuous_batching=True,
        gradient_checkpointing=False, seed=0)
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=[brevity], args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config)
    trainer.train()


if __name__ == "__main__":
    main()
