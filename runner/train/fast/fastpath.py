"""The fast path: memory and speed switches that must not change the numbers.

- Chunked cross-entropy: the LM head and the loss run over slices of tokens under recomputation,
  so a batch never holds [tokens x vocab] logits in fp32 (2048 x 4 x 128k x 4 bytes = 4 GiB for
  Llama-3). Same loss, same gradients as the model's own loss (tests/test_fastpath.py).
- Liger kernels (fused linear cross-entropy, RMSNorm, RoPE, SwiGLU) when installed, on a GPU.
- torch.compile of the model when asked.
Each decision is recorded in plan.runtime by `apply`.
"""

from __future__ import annotations

import importlib.util

from runner.errors import UserError

IGNORE = -100
LIGER_FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3")


def chunked_causal_lm_loss(hidden, lm_head, labels, num_items_in_batch=None, chunk_tokens: int = 1024):
    """Next-token cross-entropy of `hidden` [B, T, H] through `lm_head`, chunk by chunk.

    Matches transformers' ForCausalLMLoss: labels shift left by one, -100 is ignored, the sum is
    divided by `num_items_in_batch` when given (gradient accumulation) else by the trained tokens.
    No host-device sync: the denominator stays a tensor.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    shift_labels = F.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = shift_labels.reshape(-1).to(flat_hidden.device)

    def chunk_loss(h, y):
        logits = lm_head(h).float()
        return F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum")

    total = flat_hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, flat_hidden.shape[0], chunk_tokens):
        h = flat_hidden[start:start + chunk_tokens]
        y = flat_labels[start:start + chunk_tokens]
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(chunk_loss, h, y, use_reentrant=False)
        else:
            total = total + chunk_loss(h, y)
    if num_items_in_batch is None:
        denom = (flat_labels != IGNORE).sum().clamp(min=1)
    else:
        denom = num_items_in_batch
        if torch.is_tensor(denom):
            denom = denom.to(total.device)
    return total / denom


def _causal_lm_parts(model):
    """(causal LM, lm_head) of a model, looking through PEFT and DDP wrappers; (None, None) when the
    model has no swappable output embedding."""
    base = getattr(model, "module", model)  # DDP
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    if not (hasattr(base, "get_output_embeddings") and hasattr(base, "set_output_embeddings")):
        return None, None
    head = base.get_output_embeddings()
    return (base, head) if head is not None else (None, None)


# Model types whose forward hands the LM head's output to the loss unchanged: the chunked loss may
# swap the head out and run it itself. TRANSFORMED_LOGITS change the logits first, in a way
# `logits_transform` reproduces. Any other type keeps its own loss (a forward may scale, cap or
# otherwise change its logits: the chunked loss would silently train on something else).
PLAIN_LOGITS = ("llama", "mistral", "mixtral", "ministral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi",
                "phi3", "gemma", "olmo", "olmo2", "starcoder2", "smollm3", "stablelm", "gpt_neox", "deepseek_v3",
                "glm4", "arcee")
TRANSFORMED_LOGITS = ("gemma2", "gemma3", "gemma3_text", "cohere", "cohere2", "granite", "granitemoe",
                      "granitemoeshared")


def logits_transform(config):
    """What a TRANSFORMED_LOGITS model's forward does to its LM head's output before the loss, as a
    function; None when nothing. Gemma 2/3 soft-cap, Cohere multiplies by logit_scale, Granite divides
    by logits_scaling."""
    import torch

    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    divide = getattr(config, "logits_scaling", None)
    if not cap and scale in (None, 1, 1.0) and divide in (None, 1, 1.0):
        return None

    def transform(logits):
        if scale not in (None, 1, 1.0):
            logits = logits * scale
        if divide not in (None, 1, 1.0):
            logits = logits / divide
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return transform


_IDENTITY: list = []


def _identity():
    """One identity module for every step: torch.compile guards on the module it finds as the head."""
    import torch

    if not _IDENTITY:
        _IDENTITY.append(torch.nn.Identity())
    return _IDENTITY[0]


def chunked_forward_loss(model, inputs: dict, num_items_in_batch=None, chunk_tokens: int = 1024):
    """The model's training loss without materialising its logits. Plain-logits models: the forward
    goes through every wrapper (DDP's gradient hooks, PEFT) with the LM head swapped for an identity,
    so the model returns its final hidden states, and the head runs chunk by chunk. Models that
    transform their logits (the forward would transform the hidden states too): the decoder is called
    directly and the transform applied per chunk; one process only (`decide` keeps DDP off this path).
    Returns None when the model has neither shape (the caller then uses the model's own loss)."""
    import torch

    base, head = _causal_lm_parts(model)
    if base is None or "labels" not in inputs:
        return None
    kwargs = {k: v for k, v in inputs.items() if k != "labels"}
    kwargs["use_cache"] = False
    transform = logits_transform(base.config)
    if transform is None:
        base.set_output_embeddings(_identity())
        try:
            out = model(**kwargs)
        finally:
            base.set_output_embeddings(head)
        hidden = out.logits if hasattr(out, "logits") else out[0]
        return chunked_causal_lm_loss(hidden, head, inputs["labels"], num_items_in_batch, chunk_tokens)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    if decoder is None:
        return None
    hidden = decoder(**kwargs)[0]
    return chunked_causal_lm_loss(hidden, lambda h: transform(head(h)), inputs["labels"], num_items_in_batch,
                                  chunk_tokens)


def _checkpointable(model) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def checkpoint_split(model, count) -> str | None:
    """"N/M": how many of the model's M decoder layers `training.gradient_checkpointing` recomputes
    (true = all, an integer = the first N); None when it is off or the model has no such layers."""
    layers = _checkpointable(model)
    if not count or not layers:
        return None
    keep = len(layers) if count is True else min(int(count), len(layers))
    return f"{keep}/{len(layers)}"


def checkpoint_callback(count):
    """Selective activation checkpointing: a TrainerCallback that, once the Trainer has turned
    checkpointing on for every decoder layer (train begin), keeps it only on the first `count`."""
    from transformers import TrainerCallback

    class SelectiveCheckpointing(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            layers = _checkpointable(model) if model is not None else []
            for i, layer in enumerate(layers):
                layer.gradient_checkpointing = bool(layer.gradient_checkpointing) and i < int(count)

    return SelectiveCheckpointing()


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def apply_liger(model, family: str) -> bool:
    """Liger's kernels on a supported family; fused linear cross-entropy replaces the loss."""
    if not liger_available() or family not in LIGER_FAMILIES:
        return False
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _apply_liger_kernel_to_instance(model=base, rope=True, rms_norm=True, swiglu=True,
                                    cross_entropy=False, fused_linear_cross_entropy=True)
    return True


def decide(training: dict, device: str, model_type: str, *, world_size: int = 1, sharded: bool = False) -> dict:
    """Which switches this run uses, for plan.runtime (auto made concrete). `sharded`: FSDP or
    ZeRO-3 parameters; `world_size`: processes of the run."""
    liger = training.get("liger", "auto")
    use_liger = bool(liger is True or (liger == "auto" and device == "cuda" and liger_available()
                                       and model_type in LIGER_FAMILIES))
    chunked = training.get("chunked_loss", "auto")
    known = model_type in PLAIN_LOGITS or model_type in TRANSFORMED_LOGITS
    if chunked is True and not known:
        raise UserError(f"training.chunked_loss is true, but runner does not know how a {model_type!r} model turns "
                        "its hidden states into logits (a forward may scale or cap them)",
                        where="training.chunked_loss", hint="use auto (the model's own loss for this type) or false")
    # Liger's fused linear cross-entropy already avoids the logits: it wins over the chunked loss.
    use_chunked = not use_liger and bool(chunked is True or (chunked == "auto" and known))
    out = {"liger": use_liger, "chunked_loss": use_chunked, "torch_compile": bool(training.get("torch_compile"))}
    if chunked == "auto" and not use_liger and not known:
        out["chunked_loss_off_because"] = f"model type {model_type!r} is not known to hand its logits to the loss unchanged"
    if use_chunked and sharded:
        # The chunked loss runs the LM head outside the root module's forward: FSDP2 has resharded it
        # by then and ZeRO-3 would recompute against partitioned weights.
        out.update(chunked_loss=False, chunked_loss_off_because="sharded parameters (fsdp / ZeRO-3)")
    elif use_chunked and world_size > 1 and model_type in TRANSFORMED_LOGITS:
        # Such models take the chunked loss by calling their decoder directly, past DDP's wrapper.
        out.update(chunked_loss=False, chunked_loss_off_because=f"several processes (DDP) with {model_type!r}, "
                                                                "whose forward transforms its logits")
    return out


def decide_fused_lora(training: dict, device: str, adapter: dict, quantized: bool, sharded: bool) -> bool:
    """Whether LoRA layers take runner.train.fast.fused_lora (auto: GPU, plain LoRA, unquantized, unsharded)."""
    setting = training.get("fused_lora", "auto")
    if adapter.get("kind") != "lora" or setting is False:
        return False
    return setting is True or (device == "cuda" and not quantized and not sharded)
