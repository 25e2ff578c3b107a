"""The fast path's layer swaps on the adapted model, as the Runtime decided them: fused LoRA (its
FP8 base under training.precision fp8), torchao's float8 layers for an FP8 full fine-tune, and
last, around what the swaps left, torch.compile of each decoder layer (training.torch_compile)."""

from __future__ import annotations


def swap_layers(model, fast) -> tuple[int, str | None]:
    """(LoRA layers on the fused path, a line to print or None)."""
    fp8 = getattr(fast, "fp8", None)   # None in a plan.json written before precision fp8 existed
    fused, note = 0, None
    if fast.fused_lora:
        from runner.train.fast.fused_lora import fuse_lora
        from runner.train.runtime import FP8_BACKWARD

        # A plan.json written before fp8_backward was recorded: today's default.
        backward = (fast.fp8_backward or FP8_BACKWARD) if fp8 == "lora-base" else None
        fused = fuse_lora(model, fp8_backward=backward)
    if fp8 == "torchao":
        from runner.train.fast.fp8_full import convert_full

        note = f"fp8: {convert_full(model)} linear layers train in float8 (torchao)"
    if fast.torch_compile:
        from runner.train.fast.compile import compile_layers

        compiled = f"torch.compile: {compile_layers(model)} decoder layers, compiled at their first step"
        note = f"{note}; {compiled}" if note else compiled
    return fused, note
