"""GPU check of `model.attn_implementation: varlen` against sdpa on packed rows.

A Llama-3.2-1B-shaped model (random init, bf16, LAYERS decoder layers) takes one packed batch
(micro batch 4 x 2048, sample lengths drawn from wiki_demo-like spans) with sdpa (transformers'
per-sample mask) and with runner's varlen (torch's flash varlen kernel): loss and gradient norms
must agree to bf16 precision, and forward + backward is timed for each.

    python bench/varlen_check.py [--layers 16] [--out results/varlen_check.json]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def packed_batch(rows: int, length: int, vocab: int, seed: int = 0):
    import torch

    rng = random.Random(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))
    pos = []
    for _ in range(rows):
        row, left = [], length
        while left:
            n = min(left, rng.choice([rng.randint(16, 400), rng.randint(400, 2048)]))
            row += range(n)
            left -= n
        pos.append(row)
    pos = torch.tensor(pos)
    labels = ids.clone()
    labels[pos == 0] = -100
    return {"input_ids": ids.cuda(), "position_ids": pos.cuda(), "labels": labels.cuda()}


def build(attn: str, layers: int):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from runner.train.fast import varlen

    import catalog

    cfg = LlamaConfig(**{**catalog.SHAPES["llama32_1b"], "num_hidden_layers": layers}, use_cache=False)
    torch.manual_seed(0)
    name = varlen.register() if attn == "varlen" else attn
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(cfg, attn_implementation=name, dtype=torch.bfloat16).train()


def measure(model, batch, repeats: int):
    import torch

    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.float().norm().item() for n, p in model.named_parameters() if p.grad is not None}
    first = loss.item()
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        t = time.perf_counter()
        model(**batch).loss.backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return first, grads, sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    import catalog

    batch = packed_batch(4, 2048, catalog.SHAPES["llama32_1b"]["vocab_size"])
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "layers": args.layers,
              "samples_per_row": [int((r == 0).sum()) for r in batch["position_ids"]]}
    grads = {}
    for attn in ("sdpa", "varlen"):
        model = build(attn, args.layers)
        loss, grads[attn], seconds = measure(model, batch, args.repeats)
        result[attn] = {"loss": round(loss, 5), "fwd_bwd_s_p50": round(seconds, 4)}
        del model
        torch.cuda.empty_cache()
    rel = {n: abs(grads["varlen"][n] - g) / max(g, 1e-12) for n, g in grads["sdpa"].items()}
    worst = max(rel, key=rel.get)
    result["loss_rel_diff"] = abs(result["varlen"]["loss"] - result["sdpa"]["loss"]) / abs(result["sdpa"]["loss"])
    result["grad_norm_max_rel_diff"] = {"param": worst, "value": rel[worst]}
    result["speedup_fwd_bwd"] = round(result["sdpa"]["fwd_bwd_s_p50"] / result["varlen"]["fwd_bwd_s_p50"], 3)
    result["match"] = result["loss_rel_diff"] < 1e-2 and rel[worst] < 5e-2
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if result["match"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
