"""Hand-written baseline: DPO with LoRA r=16 on all linear layers of a Llama-3-8B-shaped model (random
init, bf16, sdpa, gradient checkpointing), TRL's DPOTrainer on dpo_en_demo, as a user would write it.

Env: MODEL_DIR (config.json + tokenizer with a chat template; required), DATA (dpo_en_demo.json),
MB (2), MAX_LENGTH (2048), STEPS (10 timed steps after 3 warm-up steps), ROWS (all).
Prints one JSON line: real tokens/s (prompt+chosen and prompt+rejected, padding excluded), peak GiB,
and the token-weighted mean sequence length (attn_ctx). Runs on the CPU in fp32 without CUDA."""
import json
import os
import sys
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

model_dir = os.environ["MODEL_DIR"]
mb = int(os.environ.get("MB", 2))
max_length = int(os.environ.get("MAX_LENGTH", 2048))
warmup, steps = 3, int(os.environ.get("STEPS", 10))
cuda = torch.cuda.is_available()

# dpo_en_demo rows: {"conversations": [{"from", "value"}...], "chosen": {...}, "rejected": {...}}
roles = {"human": "user", "gpt": "assistant", "system": "system"}
rows = json.load(open(os.environ.get("DATA", "dpo_en_demo.json")))[: int(os.environ.get("ROWS", 10**9))]
train = Dataset.from_list([{
    "prompt": [{"role": roles[m["from"]], "content": m["value"]} for m in r["conversations"]],
    "chosen": [{"role": "assistant", "content": r["chosen"]["value"]}],
    "rejected": [{"role": "assistant", "content": r["rejected"]["value"]}],
} for r in rows])

tokenizer = AutoTokenizer.from_pretrained(model_dir)
config = AutoConfig.from_pretrained(model_dir)
torch.manual_seed(0)
with torch.device("cuda" if cuda else "cpu"):
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32,
                                             attn_implementation="sdpa")
model.config.use_cache = False

args = DPOConfig(output_dir="/tmp/dpo8b_baseline", per_device_train_batch_size=mb, gradient_accumulation_steps=1,
                 max_steps=warmup + steps, learning_rate=5e-6, beta=0.1, max_length=max_length,
                 bf16=cuda, gradient_checkpointing=True, optim="adamw_torch_fused" if cuda else "adamw_torch",
                 logging_steps=warmup + steps, save_strategy="no", report_to="none", use_cpu=not cuda)
peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=peft_config)

# Measurement only: real tokens of each collated batch, in the order the steps consume them.
batch_tokens, batch_lengths = [], []
collate = trainer.data_collator


def counting_collator(examples):
    batch = collate(examples)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    batch_tokens.append(sum(lengths))
    batch_lengths.append(lengths)
    return batch


trainer.data_collator = counting_collator


class Clock(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        if cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        if state.global_step == warmup and cuda:
            torch.cuda.reset_peak_memory_stats()


clock = Clock()
trainer.add_callback(clock)
trainer.train()

dt = clock.times[warmup + steps - 1] - clock.times[warmup - 1]
tokens = sum(batch_tokens[warmup:warmup + steps])
lengths = [n for b in batch_lengths[warmup:warmup + steps] for n in b]
peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
print(json.dumps(dict(mb=mb, max_length=max_length, steps=steps, device="cuda" if cuda else "cpu",
                      real_tokens_per_s=round(tokens / dt, 1), tokens=tokens,
                      attn_ctx=round(sum(n * n for n in lengths) / max(sum(lengths), 1), 2),
                      peak_gib=None if peak is None else round(peak, 2))))
sys.stdout.flush()
