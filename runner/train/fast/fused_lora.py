"""Fused LoRA linear layers: y = x W^T + b + s (x A^T) B^T as one autograd function.

PEFT's LoRA forward under bf16 autocast casts the input to the adapter's fp32 dtype, autocast casts
it back to bf16 for each matmul (a fresh copy per projection, kept for backward), and the scale and
the add are separate passes over the full output. Here the low-rank term is added inside the base
matmul's output with `addmm_` (one pass), the input the base layer already holds is the only
activation kept (plus the [tokens, r] product), and backward mirrors it. Same arithmetic as
autocast (matmuls in the input's dtype, fp32 accumulation), one rounding fewer; the parameters, the
saved adapter and everything outside these layers are PEFT's own.

Used only where it is exact to PEFT's semantics: one active vanilla LoRA adapter (no DoRA, no LoRA
bias; dropout is applied as PEFT does, and then its output is kept for backward as PEFT keeps it), an
unmerged plain nn.Linear base that is frozen, and an input in the base weight's dtype (no autocast to
another dtype). Any other call goes to PEFT's forward unchanged."""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from runner.train.fast import fp8_lora


class _LoRALinear(torch.autograd.Function):
    """y = x W^T + b + s (x_l A^T) B^T; x_l is x itself, or x after LoRA dropout (passed separately).
    With `cached` (an fp8_lora.FP8Weight of the frozen W) the base matmul runs in FP8, and so does
    the input gradient's when the cache holds W^T's FP8 copy too."""

    @staticmethod
    def forward(ctx, x, x_lora, weight, bias, lora_a, lora_b, scale: float, cached=None):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xl = x2 if x_lora is None else x_lora.reshape(-1, shape[-1])
        a = lora_a.to(x.dtype)
        b = lora_b.to(x.dtype)
        xa = xl @ a.t()
        if cached is None:
            out = F.linear(x2, weight, bias)
        else:
            out = fp8_lora.scaled_mm(x2, cached.rows, cached.row_scale, x.dtype, bias, fast_accum=True, source=x)
        out.addmm_(xa, b.t(), alpha=scale)
        # The base weight is frozen: backward needs only the low-rank input, and the adapter in the
        # input's dtype (tiny, and no recast).
        ctx.save_for_backward(xl, xa, weight, a, b)
        ctx.cached = cached   # frozen: held, not saved as a graph input
        ctx.separate = x_lora is not None
        ctx.dtypes = (lora_a.dtype, lora_b.dtype)
        ctx.scale = scale
        ctx.shape = shape
        return out.view(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        xl, xa, weight, a, b = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])
        g_xa = (g @ b).mul_(ctx.scale)            # gradient reaching x_l A^T
        grad_b = (g.t() @ xa).mul_(ctx.scale) if ctx.needs_input_grad[5] else None
        grad_a = g_xa.t() @ xl if ctx.needs_input_grad[4] else None
        grad_x = grad_xl = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            cached = ctx.cached
            if cached is not None and cached.cols is not None:
                grad_x = fp8_lora.scaled_mm(g, cached.cols, cached.col_scale, g.dtype)
            else:
                grad_x = g @ weight
            if ctx.separate:
                grad_xl = (g_xa @ a).view(ctx.shape)
            else:
                grad_x.addmm_(g_xa, a)
            grad_x = grad_x.view(ctx.shape)
        return (grad_x, grad_xl, None, None,
                grad_a.to(ctx.dtypes[0]) if grad_a is not None else None,
                grad_b.to(ctx.dtypes[1]) if grad_b is not None else None, None, None)


def _fusable(layer, x, kwargs) -> str | None:
    """The adapter name when this call can take the fused path, else None."""
    if kwargs or layer.disable_adapters or layer.merged:
        return None
    active = layer.active_adapters
    if len(active) != 1:
        return None
    name = active[0]
    if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}):
        return None
    if getattr(layer, "lora_bias", {}).get(name) or not isinstance(layer.lora_dropout[name],
                                                                     (torch.nn.Identity, torch.nn.Dropout)):
        return None
    base = layer.base_layer
    if type(base) is not torch.nn.Linear or base.weight.requires_grad:
        return None
    if x.dtype != base.weight.dtype or (base.bias is not None and base.bias.requires_grad):
        return None
    if torch.is_autocast_enabled(x.device.type) and torch.get_autocast_dtype(x.device.type) != x.dtype:
        return None
    return name


def _forward(self, x, *args, **kwargs):
    name = None if args else _fusable(self, x, kwargs)
    if name is None:
        return self._runner_peft_forward(x, *args, **kwargs)
    base = self.base_layer
    dropout = self.lora_dropout[name]
    # Dropout (training only) draws its mask here, where PEFT draws it: same random stream.
    x_lora = dropout(x) if isinstance(dropout, torch.nn.Dropout) and dropout.training and dropout.p > 0 else None
    backward = getattr(self, "_runner_fp8_backward", None)
    with torch.autocast(x.device.type, enabled=False):
        fp8 = backward is not None and fp8_lora.fp8_fits(base.in_features, base.out_features)
        return _LoRALinear.apply(x, x_lora, base.weight, base.bias, self.lora_A[name].weight,
                                 self.lora_B[name].weight, float(self.scaling[name]),
                                 fp8_lora.cached_weight(self, backward) if fp8 else None)


def fuse_lora(model, fp8_backward: str | None = None) -> int:
    """Route every PEFT LoRA Linear of `model` through the fused function (calls it cannot take fall
    back to PEFT's forward). fp8_backward "bf16" or "fp8": the frozen base matmul in FP8
    (runner.train.fast.fp8_lora; its input gradient in that precision), for layers whose sizes
    torch._scaled_mm takes. Returns how many layers were routed."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and type(module.base_layer) is torch.nn.Linear \
                and not hasattr(module, "_runner_peft_forward"):
            module._runner_peft_forward = module.forward
            module.forward = types.MethodType(_forward, module)
            count += 1
        if fp8_backward is not None and hasattr(module, "_runner_peft_forward"):
            module._runner_fp8_backward = fp8_backward
            fp8_lora.watch_merges(module)
    return count
