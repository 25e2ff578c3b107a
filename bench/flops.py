"""Useful work per token, so that a throughput reads as TFLOP/s and as a share of the GPU's peak.

N counts the parameters of the matrices every token is multiplied by in the decoder layers
(attention q/k/v/o and MLP gate/up/down). Embeddings are left out: the input embedding is a table
lookup, and the LM head (vocab x hidden) is reported apart, in `*_incl_head`. A multiply-add is
2 FLOPs, so a forward pass costs 2N per token.

- full fine-tune:  6N + 3A   (forward 2N; backward 2N for input grads + 2N for weight grads)
- LoRA / QLoRA:    4N + 3A   (frozen weights get no weight grads; the adapters' own FLOPs are
                              under 1% at r=16 and left out; recomputation is not useful work)
- DPO with LoRA:   6N + 4A   (the policy's 4N + 3A plus the reference model's forward 2N + A,
                              per token of prompt+chosen and prompt+rejected)

A is causal attention's forward, QK^T and AV over the token's attention span `ctx`, not halved for
causality (the shared baselines' convention): A = 2 * 2 * layers * heads * head_dim * ctx; its
backward costs 2A. For packed rows the span is the token's own sample, so `ctx` is the
token-weighted mean sample length sum(l^2)/sum(l); for a fully packed synthetic row it is the row.
"""
from __future__ import annotations

MULTIPLIERS = {"full": (6, 3), "lora": (4, 3), "dpo_lora": (6, 4)}


def shape_counts(shape: dict) -> dict:
    """Parameter counts of a Llama-style config (dict of LlamaConfig keys)."""
    d = shape["hidden_size"]
    heads = shape["num_attention_heads"]
    kv = shape.get("num_key_value_heads") or heads
    head_dim = shape.get("head_dim") or d // heads
    layers = shape["num_hidden_layers"]
    attn = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d
    mlp = 3 * d * shape["intermediate_size"]
    return {"decoder_matmul_params": layers * (attn + mlp), "head_params": d * shape["vocab_size"],
            "layers": layers, "attn_width": heads * head_dim}


def attention_flops(shape: dict, ctx: float) -> float:
    c = shape_counts(shape)
    return 2 * 2 * c["layers"] * c["attn_width"] * ctx


def flops_per_token(shape: dict, work: str, ctx: float, include_head: bool = False) -> float:
    weight_mult, attn_mult = MULTIPLIERS[work]
    c = shape_counts(shape)
    n = c["decoder_matmul_params"] + (c["head_params"] if include_head else 0)
    return weight_mult * n + attn_mult * attention_flops(shape, ctx)


def formula(work: str) -> str:
    w, a = MULTIPLIERS[work]
    return (f"useful FLOPs/token = {w}*N + {a}*A; N = decoder matmul params (embeddings and LM head left out; "
            f"*_incl_head adds the LM head to N); A = 4 * layers * heads * head_dim * ctx (causal attention "
            f"forward, not halved), ctx = token-weighted mean sample length")


def useful_tflops(tokens_per_s: float | None, shape: dict, work: str, ctx: float | None, peak_tflops: float) -> dict:
    if not tokens_per_s or ctx is None:
        return {"tflops": None, "tflops_incl_head": None, "mfu": None, "mfu_incl_head": None}
    strict = tokens_per_s * flops_per_token(shape, work, ctx) / 1e12
    head = tokens_per_s * flops_per_token(shape, work, ctx, include_head=True) / 1e12
    sig = lambda v: float(f"{v:.4g}")  # noqa: E731  (4 significant digits: a GPU's 186.3 and a CPU's 0.01234)
    return {"tflops": sig(strict), "tflops_incl_head": sig(head), "mfu": sig(strict / peak_tflops),
            "mfu_incl_head": sig(head / peak_tflops)}


def token_weighted_span(lengths) -> float | None:
    """sum(l^2) / sum(l): the mean attention span seen by a token."""
    lengths = [int(n) for n in lengths if n]
    total = sum(lengths)
    return round(sum(n * n for n in lengths) / total, 2) if total else None
