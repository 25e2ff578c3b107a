"""LoRA over a frozen base in FP8 (`training.precision: fp8` with adapter.kind lora).

y = x W^T + b + s (x_l A^T) B^T, where x W^T runs as a float8 matmul (`torch._scaled_mm`, e4m3,
row-wise scales) and the low-rank term stays in bf16: fused_lora._LoRALinear runs it, given this
module's cached FP8Weight.

Why not torchao's Float8Linear: it is built for trained weights. Each step it recasts the weight
to FP8 and computes the weight gradient; a frozen base needs neither. Here the weight is cast once
and cached (the cache is checked against the weight's storage and version at each call, and dropped
by merge / unmerge, which write the weight through `.data` where no version counts), and backward
computes only the input gradient.

Scales: one per row of the activation (per token) and one per output row of the weight, amax / 448
so nothing saturates; the activation's are computed from each input (dynamic), once for the
projections that read the same input (fp8_quant.quantize). The input gradient
g W runs in FP8 too when `backward="fp8"` (g quantized per token, W^T cached per input column: a
second FP8 copy of the weight), or in bf16 against the bf16 weight when `backward="bf16"`.

`torch._scaled_mm`'s rules (torch's ScaledBlas.cpp): both operands float8, the second one
column-major, its two sizes and the shared size multiples of 16; row-wise scales float32, (M, 1) for
the first operand and (1, N) for the second, contiguous. Layers whose sizes break them keep the bf16
fused path (`fp8_fits`)."""

from __future__ import annotations

import torch

from runner.train.fast.fp8_quant import quantize, quantize_rows


def fp8_fits(in_features: int, out_features: int) -> bool:
    """Whether torch._scaled_mm can take this layer's matmuls (forward and input gradient)."""
    return in_features % 16 == 0 and out_features % 16 == 0


class FP8Weight:
    """A frozen weight [N, K] cast once: rows for the forward, and for an FP8 backward W^T's rows."""

    def __init__(self, weight: torch.Tensor, backward: str):
        self.key = key_of(weight)
        with torch.no_grad():
            w = weight.detach()
            q, scale = quantize_rows(w)                     # [N, K], scale [N, 1]
            self.rows, self.row_scale = q, scale.t().contiguous()   # used as (1, N)
            self.cols = self.col_scale = None
            if backward == "fp8":
                qt, scale_t = quantize_rows(w.t())          # [K, N], scale [K, 1]
                self.cols, self.col_scale = qt, scale_t.t().contiguous()   # used as (1, K)


def key_of(weight: torch.Tensor) -> tuple:
    return weight.data_ptr(), weight._version, tuple(weight.shape), weight.dtype, weight.device


def scaled_mm(a: torch.Tensor, b_rows: torch.Tensor, b_scale: torch.Tensor, out_dtype, bias=None,
              fast_accum: bool = False, source: torch.Tensor | None = None):
    """a [M, K] (any float) times b^T, b given as FP8 rows [N, K] with scales (1, N): a quantized
    per row, one float8 matmul, the output in out_dtype. fast_accum: Hopper's faster accumulation
    without periodic promotion to fp32; used for the forward, as torchao's recipes do, never for
    gradients. source: the tensor `a` is a view of, when other layers read it too (q, k, v): its
    quantization is done once (fp8_quant.quantize)."""
    aq, a_scale = quantize(a, source)
    fused_bias = bias if out_dtype == torch.bfloat16 else None   # _scaled_mm adds a bias to bf16 output only
    out = torch._scaled_mm(aq, b_rows.t(), scale_a=a_scale, scale_b=b_scale, bias=fused_bias, out_dtype=out_dtype,
                           use_fast_accum=fast_accum)
    return out if bias is None or fused_bias is not None else out.add_(bias)


def cached_weight(layer, backward: str) -> FP8Weight:
    """The layer's FP8 copy of its base weight, cast again when the weight has changed. Inside
    torch.compile's graphs (training.torch_compile) the storage check would break every layer's
    graph: there the cache is trusted as it is (merge / unmerge still drop it)."""
    weight = layer.base_layer.weight
    cached = getattr(layer, "_runner_fp8", None)
    if cached is not None and torch.compiler.is_compiling():
        return cached
    if cached is None or cached.key != key_of(weight):
        layer._runner_fp8 = cached = _cast(weight, backward)
    return cached


@torch.compiler.disable
def _cast(weight: torch.Tensor, backward: str) -> FP8Weight:
    return FP8Weight(weight, backward)


def drop_cache(layer) -> None:
    layer._runner_fp8 = None


def _dropping(method, layer):
    def wrapped(*args, **kwargs):
        drop_cache(layer)
        try:
            return method(*args, **kwargs)
        finally:
            drop_cache(layer)
    return wrapped


def watch_merges(layer) -> None:
    """merge / unmerge write the base weight through `.data` (no version bump): drop the cache."""
    for name in ("merge", "unmerge"):
        if not hasattr(layer, f"_runner_{name}"):
            method = getattr(layer, name)
            setattr(layer, f"_runner_{name}", method)
            setattr(layer, name, _dropping(method, layer))


def drop_caches(model) -> int:
    """Drop every FP8 weight cache of `model` (after writing base weights by hand); returns how many."""
    count = 0
    for module in model.modules():
        if getattr(module, "_runner_fp8", None) is not None:
            drop_cache(module)
            count += 1
    return count
