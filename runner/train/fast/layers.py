"""The fast path's layer swaps on the adapted model, as the Runtime decided them: fused LoRA (its
FP8 base under training.precision fp8) and torchao's float8 layers for an FP8 full fine-tune."""

from __future__ import annotations


def swap_layers(model, fast) -> tuple[int, str | None]:
    """(LoRA layers on the fused path, a line to print or None)."""
    fp8 = getattr(fast, "fp8", None)   # None in a plan.json written before precision fp8 existed
    fused, note = 0, None
    if fast.fused_lora:
        from runner.train.fast.fp8_lora import BACKWARD
        from runner.train.fast.fused_lora import fuse_lora

        fused = fuse_lora(model, fp8_backward=BACKWARD if fp8 == "lora-base" else None)
    if fp8 == "torchao":
        from runner.train.fast.fp8_full import convert_full

        note = f"fp8: {convert_full(model)} linear layers train in float8 (torchao)"
    return fused, note
