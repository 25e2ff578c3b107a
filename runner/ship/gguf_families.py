"""Per-family rules for writing a Hugging Face causal LM as GGUF: the llama.cpp architecture it
becomes, the hyperparameter keys that architecture reads, and what changes in its tensors.

A family is supported only where every setting of the config that changes the model's output
has a place in the GGUF file; anything else is refused (exit 2), never written wrong. llama.cpp
reads a GGUF by its `general.architecture` and these keys, so a value it cannot read (a sliding
window on the llama architecture, a Gemma attention scale it would not derive) is a refusal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from runner.errors import UserError


@dataclass(frozen=True)
class Family:
    model_type: str      # the transformers config's model_type
    arch: str            # gguf.MODEL_ARCH member name
    permute_qk: bool     # llama.cpp's llama architecture expects q/k rows in its rotary layout
    norm_shift: float    # added to every RMSNorm weight (Gemma's norms compute x * (1 + w))
    refuse_bias: bool    # the architecture has no place for projection biases


FAMILIES = {
    "llama": Family("llama", "LLAMA", True, 0.0, False),
    # llama.cpp has no mistral text architecture: Mistral is the llama architecture.
    "mistral": Family("mistral", "LLAMA", True, 0.0, True),
    "qwen2": Family("qwen2", "QWEN2", False, 0.0, False),
    "qwen3": Family("qwen3", "QWEN3", False, 0.0, False),
    "gemma2": Family("gemma2", "GEMMA2", False, 1.0, True),
    "gemma3_text": Family("gemma3_text", "GEMMA3", False, 1.0, True),
}

SUPPORTED = "Llama, Mistral, Qwen2/2.5, Qwen3, Gemma 2, Gemma 3 (text)"


def family_for(config) -> Family:
    model_type = getattr(config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        hint = ("a Gemma 3 vision-language model: export its text model (Gemma3ForCausalLM) instead"
                if model_type == "gemma3" else f"GGUF export supports {SUPPORTED}")
        raise UserError(f"cannot export a {model_type!r} model to GGUF: runner has no verified conversion for it",
                        where="model", hint=hint + "; or merge it (runner merge) and use llama.cpp's own converter")
    return family


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _refuse(config, what: str) -> UserError:
    return UserError(f"cannot export this {config.model_type} model to GGUF: {what}", where="model",
                     hint="llama.cpp's architecture for it has no setting for this; runner refuses rather than "
                          "write a file that answers differently")


def write_hparams(writer, config, family: Family, vocab_size: int) -> list:
    """The architecture's keys; returns extra tensors [(gguf name, float32 array)] (rope factors)."""
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    hd = head_dim(config)
    # Within its window, sliding attention is full attention: the llama architecture (Mistral)
    # has no window, so the file's context stops there.
    context = int(config.max_position_embeddings)
    if family.model_type == "mistral" and _windowed(config):
        context = int(config.sliding_window)
    writer.add_context_length(context)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(vocab_size)
    if hd != config.hidden_size // n_head or family.arch in ("GEMMA2", "GEMMA3", "QWEN3"):
        writer.add_key_length(hd)
        writer.add_value_length(hd)
    if family.arch == "LLAMA":
        writer.add_rope_dimension_count(hd)
    act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    if act != ("gelu_pytorch_tanh" if family.norm_shift else "silu"):
        raise _refuse(config, f"activation {act!r}")
    if family.refuse_bias and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        raise _refuse(config, "projection biases")
    if getattr(config, "mlp_bias", False):
        raise _refuse(config, "mlp biases")
    if family.model_type in ("qwen2", "qwen3") and getattr(config, "use_sliding_window", False):
        raise _refuse(config, "use_sliding_window")
    if family.norm_shift:
        _gemma_hparams(writer, config, family, hd)
        return []
    rope = dict(config.rope_parameters or {})
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    return _rope_scaling(writer, config, rope, hd)


def _windowed(config) -> bool:
    window = getattr(config, "sliding_window", None)
    return bool(window) and window < config.max_position_embeddings


def _gemma_hparams(writer, config, family: Family, hd: int) -> None:
    n_layers = config.num_hidden_layers
    # llama.cpp scales queries by 1/sqrt(head_dim), or by 1/sqrt(hidden/heads) for its 27B sizes only.
    scale = config.query_pre_attn_scalar
    big = {"GEMMA2": 46, "GEMMA3": 62}[family.arch] == n_layers and scale == config.hidden_size // config.num_attention_heads
    if scale != hd and not big:
        raise _refuse(config, f"query_pre_attn_scalar {scale} differs from head_dim {hd}")
    # llama.cpp's Gemma layers alternate sliding and full attention in a fixed pattern.
    period = 2 if family.arch == "GEMMA2" else 6
    expected = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(n_layers)]
    if list(config.layer_types) != expected:
        raise _refuse(config, f"layer_types {list(config.layer_types)} (llama.cpp expects {expected})")
    writer.add_sliding_window(int(config.sliding_window))
    if family.arch == "GEMMA2":
        writer.add_rope_freq_base(float(config.rope_parameters.get("rope_theta", 10000.0)))
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping or 0.0))
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping or 0.0))
        if config.rope_parameters.get("rope_type", "default") != "default":
            raise _refuse(config, f"rope type {config.rope_parameters['rope_type']!r}")
        return
    if getattr(config, "attn_logit_softcapping", None):
        raise _refuse(config, "attn_logit_softcapping")
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    full = config.rope_parameters.get("full_attention", config.rope_parameters)
    local = config.rope_parameters.get("sliding_attention", {})
    if float(local.get("rope_theta", 10000.0)) != 10000.0 or local.get("rope_type", "default") != "default":
        raise _refuse(config, f"sliding-layer rope {local} (llama.cpp fixes it at theta 10000, unscaled)")
    writer.add_rope_freq_base(float(full.get("rope_theta", 1_000_000.0)))
    if _rope_scaling(writer, config, dict(full), hd):
        raise _refuse(config, "llama3 rope scaling")


def _rope_scaling(writer, config, rope: dict, hd: int) -> list:
    import gguf

    kind = rope.get("rope_type", "default")
    if kind == "default":
        return []
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        return []
    if kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
        for key in ("attention_factor", "beta_fast", "beta_slow"):
            if rope.get(key) is not None:
                getattr(writer, {"attention_factor": "add_rope_scaling_attn_factors",
                                 "beta_fast": "add_rope_scaling_yarn_beta_fast",
                                 "beta_slow": "add_rope_scaling_yarn_beta_slow"}[key])(float(rope[key]))
        return []
    if kind == "llama3":
        return [("rope_freqs.weight", llama3_rope_factors(rope, hd))]
    raise _refuse(config, f"rope type {kind!r}")


def llama3_rope_factors(rope: dict, hd: int):
    """Llama 3.1's frequency-dependent rope scaling as the per-dimension divisors llama.cpp reads
    from its rope_freqs tensor (from the formula in Meta's reference implementation)."""
    import numpy as np

    base = float(rope.get("rope_theta", 500000.0))
    factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old_ctx = float(rope["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors = []
    for i in range(0, hd, 2):
        wavelen = 2 * math.pi / (1.0 / base ** (i / hd))
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def permute_rows(weight, n_head: int):
    """Rows of a q or k projection (or bias) from Hugging Face's rotate-half layout to the
    interleaved pairs llama.cpp's llama architecture rotates."""
    shape = weight.shape
    return (weight.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
            .swapaxes(1, 2).reshape(shape))
