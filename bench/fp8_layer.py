"""The layer-level parts of bench/fp8_check.py (q, a, b): the activation quantizer, the FP8 LoRA
layer's numbers against fp64, and per-projection timings."""

from __future__ import annotations

import math
import time

import torch

from runner.train.fast import fp8_lora, fp8_quant
from runner.train.fast.fused_lora import _LoRALinear


def now(device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def shapes(cfg: dict) -> dict:
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    return {"q_o": (h, h), "k_v": (h, kv), "gate_up": (h, i), "down": (i, h)}


def layer_inputs(k: int, n: int, m: int, device, dtype, r: int = 16):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, k, device=device, dtype=dtype, generator=g)
    w = (torch.randn(n, k, device=device, generator=g) / math.sqrt(k)).to(dtype)
    a = (torch.randn(r, k, device=device, generator=g) / math.sqrt(k)).to(dtype).requires_grad_()
    b = (torch.randn(n, r, device=device, generator=g) / math.sqrt(r)).to(dtype).requires_grad_()
    return x.requires_grad_(), w, a, b


def run_layer(mode: str, x, w, a, b, grad):
    """One forward and backward; mode bf16 (fused), fp8-bf16bwd, fp8-fp8bwd. Returns (y, grad_x)."""
    x.grad = None
    if mode == "bf16":
        y = _LoRALinear.apply(x, None, w, None, a, b, 2.0)
    else:
        cached = getattr(w, "_fp8", {}).get(mode)
        if cached is None:
            cached = fp8_lora.FP8Weight(w, "fp8" if mode == "fp8-fp8bwd" else "bf16")
            w._fp8 = {**getattr(w, "_fp8", {}), mode: cached}
        y = _LoRALinear.apply(x, None, w, None, a, b, 2.0, cached)
    y.backward(grad)
    return y, x.grad


def part_quantizer(cfg, device, dtype, tokens, iters) -> dict:
    out = {}
    compiled = torch.compile(fp8_quant.quantize_rows, dynamic=True)
    g = torch.Generator(device=device).manual_seed(0)
    for width in sorted({cfg["hidden_size"], cfg["intermediate_size"], 100}):
        x = torch.randn(tokens, width, device=device, dtype=dtype, generator=g)
        x[0].zero_()                                       # an all-zero row
        x[1] *= 1e4                                        # a row far above 448
        x[2] *= 1e-6                                       # a tiny row
        x[3, 0] = 3e4                                      # one outlier in a row
        ref_q, ref_s = fp8_quant.quantize_rows(x)
        row = {}
        fns = {"eager": fp8_quant.quantize_rows, "compiled": compiled}
        if device == "cuda":
            fns["triton"] = fp8_quant.quantize_triton
            q, s_ = fp8_quant.quantize_triton(x)
            differ = q.view(torch.uint8) != ref_q.view(torch.uint8)
            row["triton_bitwise_equal"] = bool(not differ.any() and torch.equal(s_, ref_s))
            row["scales_equal"] = bool(torch.equal(s_, ref_s))
            row["values_differing"] = int(differ.sum())
            if differ.any():
                i = differ.nonzero()[0].tolist()
                row["first_difference"] = {"at": i, "input": float(x[i[0], i[1]]), "scale": float(ref_s[i[0], 0]),
                                           "eager": float(ref_q[i[0], i[1]].float()), "triton": float(q[i[0], i[1]].float())}
        for name, fn in fns.items():
            for _ in range(3):
                fn(x)
            start = now(device)
            for _ in range(iters):
                fn(x)
            row[f"{name}_ms"] = (now(device) - start) / iters * 1e3
        out[str(width)] = row
        print(f"q width {width}: " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in row.items()), flush=True)
    return out


def part_numerics(cfg, device, dtype, tokens) -> dict:
    out = {}
    for name, (k, n) in shapes(cfg).items():
        x, w, a, b = layer_inputs(k, n, tokens, device, dtype)
        grad = torch.randn(tokens, n, device=device, dtype=dtype)
        xf, wf, af, bf = (t.detach().double().requires_grad_() for t in (x, w, a, b))
        yf, gf = run_layer("bf16", xf, wf, af, bf, grad.double())
        row = {}
        for mode in ("bf16", "fp8-bf16bwd", "fp8-fp8bwd"):
            y, gx = run_layer(mode, x, w, a, b, grad)
            row[mode] = {"out_rel_err": rel(y, yf), "grad_x_rel_err": rel(gx, gf), "grad_a_rel_err": rel(a.grad, af.grad)}
            a.grad = b.grad = None
        out[name] = row
        print(f"a {name:8s} K={k} N={n}: " + "  ".join(f"{m}: out {v['out_rel_err']:.4f} grad_x {v['grad_x_rel_err']:.4f}"
                                                     for m, v in row.items()), flush=True)
    return out


def rel(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def part_microbench(cfg, device, dtype, tokens, iters) -> dict:
    out = {}
    for name, (k, n) in shapes(cfg).items():
        x, w, a, b = layer_inputs(k, n, tokens, device, dtype)
        grad = torch.randn(tokens, n, device=device, dtype=dtype)
        row = {}
        for mode in ("bf16", "fp8-bf16bwd", "fp8-fp8bwd"):
            for _ in range(3):
                run_layer(mode, x, w, a, b, grad)
            start = now(device)
            for _ in range(iters):
                run_layer(mode, x, w, a, b, grad)
            row[mode] = (now(device) - start) / iters * 1e3
        out[name] = {"ms": row, "speedup": {m: row["bf16"] / row[m] for m in row}}
        print(f"b {name:8s} M={tokens} K={k} N={n}: " + "  ".join(f"{m} {v:.3f} ms" for m, v in row.items()) +
              f"  fp8 speed-up {row['bf16'] / row['fp8-fp8bwd']:.2f}x (bf16 bwd {row['bf16'] / row['fp8-bf16bwd']:.2f}x)",
              flush=True)
    return out
