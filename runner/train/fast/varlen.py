"""`model.attn_implementation: varlen`: packed rows through torch's variable-length flash attention.

With `sdpa`, transformers turns a packed row's restarting position_ids into a [rows, 1, T, T] mask;
a masked sdpa call cannot use the flash kernel, and the kernel it gets computes every sample
against the whole row. `varlen` hands the samples to `torch.nn.attention.varlen.varlen_attn`
(FlashAttention-2 over cumulative sequence offsets, torch >= 2.9): each sample attends causally to
itself only, no mask is built, and padding tokens are left out of the kernel.

Samples: a new one starts at each row start and wherever a position does not follow the one
before (the rule transformers uses for packed rows); with a 2D padding mask (unpacked, padded
batches) the masked tokens are dropped. The offsets are computed once per batch (one host sync)
and shared by every layer. On a machine without CUDA each sample goes through sdpa on its own
(the same numbers, slowly): for tests and CPU smoke runs.

A non-causal call without mask or positions (a vision encoder's attention over one image, as
Qwen-VL's tower calls it chunk by chunk) goes to transformers' sdpa unchanged.

Training only: a KV cache, soft-capping, sliding windows, attention sinks and attention dropout
are refused (runner.train.model.check_varlen_model at load, and again in the forward).
"""

from __future__ import annotations

import functools
import inspect
import math

NAME = "runner_varlen"  # the key registered with transformers; the config value is `varlen`
_BATCH: list = []  # [(key, position_ids, mask, segments)] of the last batch: every layer reuses it


def missing() -> str | None:
    """Why this torch cannot run varlen attention (it has no varlen_attn); None when it can."""
    import importlib.util

    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        import torch

        return f"torch {torch.__version__} has no varlen_attn (needs >= 2.9)"
    return None


def register() -> str:
    """Register the attention function (and the mask builder that keeps a padding mask 2D) with
    transformers; returns the name to pass as attn_implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(NAME, _eager_only())
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)
    return NAME


def _eager_only():
    """The attention function, kept out of torch.compile's graphs: it syncs once per batch for the
    sample offsets, and compiled around the varlen kernel a run on an H100 hit an illegal memory
    access. The layers around it still compile."""
    import torch

    return torch.compiler.disable(varlen_attention_forward)


def unsupported(config) -> str | None:
    """Why a model with this config cannot train on varlen attention; None when it can."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "attn_logit_softcapping", None):
        return "its attention soft-caps the logits (attn_logit_softcapping)"
    window = getattr(text, "sliding_window", None)
    if window and getattr(text, "use_sliding_window", True) is not False:
        return f"it uses sliding-window attention (sliding_window: {window})"
    if getattr(text, "attention_dropout", 0.0):
        return f"it has attention dropout ({text.attention_dropout}), which the varlen kernel does not apply"
    if getattr(text, "is_encoder_decoder", False) or getattr(text, "is_causal", True) is False:
        return "it is not a causal decoder"
    return None


def segments(position_ids, mask, rows: int, length: int):
    """(token index or None, cu_seqlens int32, longest sample) for a [rows, length] batch.

    position_ids: [rows or 1, length] or None (0..length-1 in every row); mask: [rows, length]
    bool/int (1 = real token) or None. Token index: the kept tokens' flat positions when some are
    masked out, else None."""
    import torch

    device = position_ids.device if position_ids is not None else (mask.device if mask is not None else None)
    if position_ids is None:
        position_ids = torch.arange(length, device=device).expand(rows, length)
    position_ids = position_ids.expand(rows, length)
    start = torch.ones((rows, length), dtype=torch.bool, device=device)
    start[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    keep = None
    if mask is not None:
        keep = mask.to(torch.bool)
        start[:, 1:] |= ~keep[:, :-1]  # a token after a masked one starts a sample
        start &= keep
    start = start.reshape(-1)
    index = None
    if keep is not None:
        index = keep.reshape(-1).nonzero().squeeze(1)
        start = start[index]
    starts = start.nonzero().squeeze(1)
    total = torch.tensor([start.numel()], device=starts.device)
    cu = torch.cat([starts, total]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0  # the one host sync per batch
    return index, cu, longest


def _batch_segments(position_ids, mask, rows: int, length: int):
    """segments() of this batch, computed by its first layer; the tensors' identity and in-place
    version say whether a call belongs to the same batch (every layer, checkpoint recomputation)."""
    key = tuple((id(t), t._version) if t is not None else None for t in (position_ids, mask))
    if _BATCH and _BATCH[0][0] == key and _BATCH[0][1] is position_ids and _BATCH[0][2] is mask:
        return _BATCH[0][3]
    found = segments(position_ids, mask, rows, length)
    _BATCH[:] = [(key, position_ids, mask, found)]  # holding the tensors keeps their ids unique
    return found


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs):
    """transformers attention interface: query [B, Hq, T, D], key/value [B, Hkv, T, D] ->
    ([B, T, Hq, D], None)."""
    for name in ("softcap", "sliding_window", "s_aux"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"varlen attention does not support {name}; use sdpa or flex_attention")
    if dropout:
        raise NotImplementedError("varlen attention has no attention dropout; use sdpa")
    if getattr(module, "is_causal", True) is False:
        if attention_mask is None and kwargs.get("position_ids") is None:
            # A vision encoder's bidirectional attention over one image (or window) at a time: the
            # whole call is one sample, which sdpa computes exactly.
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            return sdpa_attention_forward(module, query, key, value, None, scaling=scaling, is_causal=False)
        raise NotImplementedError("varlen attention is causal only; use sdpa")
    rows, q_heads, length, dim = query.shape
    if key.shape[2] != length or (attention_mask is not None and attention_mask.dim() != 2):
        raise NotImplementedError("varlen attention is for training (no KV cache); generate with sdpa")
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        # Decoders built the usual transformers way pass them down; without them the samples of a
        # packed row could not be told apart.
        raise RuntimeError(f"{type(module).__name__} does not pass position_ids to its attention: varlen cannot "
                           "find the samples of a packed row; use sdpa")
    index, cu, longest = _batch_segments(position_ids, attention_mask, rows, length)
    scale = scaling if scaling is not None else 1.0 / math.sqrt(dim)

    def tokens(x):  # [B, H, T, D] -> [kept tokens, H, D]
        x = x.transpose(1, 2).reshape(rows * length, x.shape[1], dim)
        return x if index is None else x.index_select(0, index)

    q, k, v = tokens(query), tokens(key), tokens(value)
    if q.is_cuda:
        out = _flash(q, k, v, cu, longest, scale)
    else:
        out = _per_sample_sdpa(q, k, v, cu, scale)
    if index is not None:
        full = out.new_zeros((rows * length, q_heads, dim))
        out = full.index_copy(0, index, out)
    return out.reshape(rows, length, q_heads, dim), None


@functools.cache
def _kernel_params() -> frozenset:
    """The keywords this torch's varlen_attn takes (2.11: window_size, scale; newer: enable_gqa)."""
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def _flash(q, k, v, cu, longest: int, scale: float):
    from torch.nn.attention.varlen import varlen_attn

    params = _kernel_params()
    kwargs = {}
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0)
    else:
        kwargs["is_causal"] = True
    if "scale" in params:
        kwargs["scale"] = scale
    elif abs(scale * math.sqrt(q.shape[-1]) - 1.0) > 1e-6:
        q = q * (scale * math.sqrt(q.shape[-1]))  # older torch: the kernel's own 1/sqrt(D) only
    return varlen_attn(q, k, v, cu, cu, longest, longest, **kwargs)


def _per_sample_sdpa(q, k, v, cu, scale: float):
    """The reference path: each sample through causal sdpa on its own."""
    import torch
    import torch.nn.functional as F

    bounds = cu.tolist()
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (x[a:b].transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale,
                                                   enable_gqa=ks.shape[1] != qs.shape[1])[0].transpose(0, 1))
    return torch.cat(outs) if outs else q.new_zeros(q.shape)
