"""The chunked loss: the LM head and the cross-entropy run over slices of tokens under
recomputation, so a batch never holds [tokens x vocab] logits in fp32 (2048 x 4 x 128k x 4 bytes =
4 GiB for Llama-3). Same loss, same gradients as the model's own loss (tests/test_fastpath.py).
Which models take it is decided in runner.train.runtime (PLAIN_LOGITS, TRANSFORMED_LOGITS).
"""

from __future__ import annotations

IGNORE = -100


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
        weight = getattr(head, "weight", None)
        if weight is not None and weight.is_floating_point() and hidden.dtype != weight.dtype:
            hidden = hidden.to(weight.dtype)  # a forward may upcast its logits (here the hidden states) to fp32
        return chunked_causal_lm_loss(hidden, head, inputs["labels"], num_items_in_batch, chunk_tokens)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    if decoder is None:
        return None
    hidden = decoder(**kwargs)[0]
    return chunked_causal_lm_loss(hidden, lambda h: transform(head(h)), inputs["labels"], num_items_in_batch,
                                  chunk_tokens)
