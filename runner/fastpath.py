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
    """(decoder, lm_head) of a causal LM, looking through PEFT wrappers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = getattr(base, "module", base)  # DDP
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else getattr(base, "lm_head", None)
    if decoder is None or head is None:
        return None, None
    return decoder, head


def chunked_forward_loss(model, inputs: dict, num_items_in_batch=None, chunk_tokens: int = 1024):
    """The model's training loss without materialising its logits. Returns None when the model does not
    have the decoder + LM head shape (the caller then uses the model's own loss)."""
    decoder, head = _causal_lm_parts(model)
    if decoder is None or "labels" not in inputs:
        return None
    kwargs = {k: v for k, v in inputs.items() if k != "labels"}
    kwargs["use_cache"] = False
    out = decoder(**kwargs)
    return chunked_causal_lm_loss(out[0], head, inputs["labels"], num_items_in_batch, chunk_tokens)


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
    use_chunked = bool(chunked is True or (chunked == "auto" and not use_liger))
    out = {"liger": use_liger, "chunked_loss": use_chunked, "torch_compile": bool(training.get("torch_compile"))}
    if use_chunked and sharded:
        # The chunked loss calls the decoder and the LM head one by one, outside the root module's
        # forward: FSDP2 then sees several roots and ZeRO-3 recomputes against partitioned weights.
        out.update(chunked_loss=False, chunked_loss_off_because="sharded parameters (fsdp / ZeRO-3)")
    elif use_chunked and world_size > 1:
        # Under DDP the chunked loss would call the decoder inside the wrapper and skip the
        # Trainer's loss scaling across processes; until it goes through the wrapper, it stays off.
        out.update(chunked_loss=False, chunked_loss_off_because="several processes (DDP)")
    return out


def decide_fused_lora(training: dict, device: str, adapter: dict, quantized: bool, sharded: bool) -> bool:
    """Whether LoRA layers take runner.fused_lora (auto: GPU, plain LoRA, unquantized, unsharded)."""
    setting = training.get("fused_lora", "auto")
    if adapter.get("kind") != "lora" or setting is False:
        return False
    return setting is True or (device == "cuda" and not quantized and not sharded)
