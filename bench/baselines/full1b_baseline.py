"""Hand-written baseline: full fine-tune of a Llama-3.2-1B-shaped model (random init, bf16, sdpa) with
plain transformers and a fused AdamW, fully packed synthetic sequences, as a user would write it.

Env: MODEL_DIR (a folder with config.json; default: the Llama-3.2-1B shape below), SEQ (2048),
MB (4), GC (0; 1 = gradient checkpointing), STEPS (10 timed steps after 3 warm-up steps).
Prints one JSON line: tokens/s, peak GiB. On a machine without CUDA it runs on the CPU in fp32
(for smoke tests with a tiny MODEL_DIR)."""
import json
import os
import sys
import time

import torch
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

seq = int(os.environ.get("SEQ", 2048))
mb = int(os.environ.get("MB", 4))
gc = os.environ.get("GC", "0") == "1"
steps = int(os.environ.get("STEPS", 10))
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32

if os.environ.get("MODEL_DIR"):
    cfg = AutoConfig.from_pretrained(os.environ["MODEL_DIR"])
else:
    cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=8192,
                      rope_theta=500000.0, tie_word_embeddings=True)
cfg._attn_implementation = "sdpa"
cfg.use_cache = False
torch.manual_seed(0)
with torch.device(device):
    model = LlamaForCausalLM(cfg).to(dtype)
n_params = sum(p.numel() for p in model.parameters())
if gc:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01, fused=True)
x = torch.randint(0, cfg.vocab_size, (mb, seq), device=device)


def step():
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


for _ in range(3):
    step()
if device == "cuda":
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
for _ in range(steps):
    step()
if device == "cuda":
    torch.cuda.synchronize()
dt = time.perf_counter() - t
peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
print(json.dumps(dict(seq=seq, mb=mb, gc=gc, params=n_params, device=device, steps=steps,
                      tokens_per_s=round(steps * mb * seq / dt, 1), peak_gib=None if peak is None else round(peak, 2))))
sys.stdout.flush()
