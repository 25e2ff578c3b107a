"""GPU check of `training.activation_offloading` (runner.train.fast.offload).

A Llama-3-8B-shaped stack cut to LAYERS decoder layers (random init, bf16, every layer
checkpointed, sdpa) takes one row of SEQ tokens with and without offloading: the loss and every
gradient must be equal (the copies are exact), and the peak GPU memory and the time of forward +
backward are recorded for each. --smoke: a tiny model on the CPU (offloading does nothing there:
the check only runs the code).

    python bench/offload_check.py [--layers 4] [--seq 16384] [--out bench/results/offload_check.json] [--smoke]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build(layers: int, smoke: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                 num_key_value_heads=8, max_position_embeddings=32768, rope_theta=500000.0)
    if smoke:
        shape = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    device = "cpu" if smoke else "cuda"
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, attn_implementation="sdpa", use_cache=False,
                                             **shape)).to(torch.float32 if smoke else torch.bfloat16)
    model.gradient_checkpointing_enable({"use_reentrant": False})
    model.train()
    return model, device


def step(model, ids, offload: bool):
    import torch

    from runner.train.fast.offload import maybe_offloading

    model.zero_grad(set_to_none=True)
    cuda = ids.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with maybe_offloading(offload):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss), grads, seconds, peak


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq", type=int, default=16384)  # the plain loss keeps fp32 logits: 8 GiB at 16k
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "offload_check.json")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    import torch

    seq = 128 if args.smoke else args.seq
    model, device = build(2 if args.smoke else args.layers, args.smoke)
    ids = torch.randint(0, model.config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(1)).to(device)
    step(model, ids, False)  # warm-up: kernels and allocator
    off = step(model, ids, False)
    again = step(model, ids, False)  # attention backward may use atomics: the run-to-run spread
    on = step(model, ids, True)

    def spread(a, b):
        return max(float((a[1][n].float() - b[1][n].float()).abs().max()) for n in a[1])

    base, diff = spread(off, again), spread(off, on)
    ok = diff <= 2 * base and abs(off[0] - on[0]) <= 2 * abs(off[0] - again[0])
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "layers": model.config.num_hidden_layers,
              "seq": seq, "loss_off": off[0], "loss_on": on[0], "max_grad_diff_off_vs_off": base,
              "max_grad_diff_off_vs_on": diff, "same_within_rerun_spread": ok,
              "seconds_off": off[2], "seconds_on": on[2], "peak_gib_off": off[3], "peak_gib_on": on[3],
              "smoke": args.smoke}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
