"""Hand-written baseline: LoRA on a Qwen2.5-VL-7B-shaped model (random init, bf16, sdpa) with plain
transformers + peft, as a user would write it: each step renders its rows with the processor's chat
template, lets the processor expand the images, masks padding (the answers-only mask costs nothing
here and is left out), and steps AdamW on the LoRA weights of the language model.

Env: MODEL_DIR (config.json + processor files, required), DATA (a mllm_demo-style JSON with image
paths relative to it, required), MB (2), GC (1: gradient checkpointing), STEPS (20 timed after
WARMUP 5). Prints one JSON line: real (unpadded) tokens/s and peak GiB. Without CUDA it runs on the
CPU in fp32 (smoke tests with a tiny MODEL_DIR)."""
import json
import os
import re
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

model_dir, data = os.environ["MODEL_DIR"], Path(os.environ["DATA"])
mb, gc = int(os.environ.get("MB", 2)), os.environ.get("GC", "1") == "1"
steps, warmup = int(os.environ.get("STEPS", 20)), int(os.environ.get("WARMUP", 5))
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32

config = AutoConfig.from_pretrained(model_dir)
config._attn_implementation = "sdpa"
torch.manual_seed(0)
with torch.device(device):
    model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
model.config.use_cache = False
if gc:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                  target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
model = get_peft_model(model, lora)
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
processor = AutoProcessor.from_pretrained(model_dir)
processor.tokenizer.padding_side = "right"
rows = json.loads(data.read_text())


def as_parts(text):
    return [{"type": "image"} if p == "<image>" else {"type": "text", "text": p}
            for p in re.split(r"(<image>)", text) if p]


def batch(i):
    chosen = [rows[(i * mb + k) % len(rows)] for k in range(mb)]
    texts = [processor.apply_chat_template([{**m, "content": as_parts(m["content"])} for m in r["messages"]],
                                           tokenize=False) for r in chosen]
    images = [[Image.open(data.parent / p).convert("RGB") for p in r["images"]] for r in chosen]
    enc = processor(text=texts, images=images, padding=True, return_tensors="pt")
    enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {k: v.to(device) for k, v in enc.items()}


def step(i):
    b = batch(i)
    loss = model(**b).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return int(b["attention_mask"].sum())


for i in range(warmup):
    step(i)
if device == "cuda":
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
t, tokens = time.perf_counter(), 0
for i in range(warmup, warmup + steps):
    tokens += step(i)
if device == "cuda":
    torch.cuda.synchronize()
dt = time.perf_counter() - t
peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
print(json.dumps({"tokens_per_s": round(tokens / dt, 1), "peak_gib": peak and round(peak, 2), "steps": steps,
                  "mb": mb, "gc": gc, "device": device}))
