"""Checks of `training.precision: fp8` that need no hardware: the combinations its FP8 matmuls
cannot serve, refused before anything loads (the GPU's own ability is decide_runtime's to check).
Called by runner.config.checks.check."""

from __future__ import annotations

FP8_ADAPTERS = ("lora", "full", "none")


def check_fp8(cfg: dict, error) -> None:
    training, adapter, model = cfg["training"], cfg["adapter"], cfg["model"]
    if training["precision"] != "fp8":
        return
    bits = cfg["quantization"]["bits"]
    if bits:
        error(("quantization", "bits"), f"training.precision fp8 casts bf16 base weights to float8; a {bits}-bit "
              "base has none to cast", "remove quantization, or keep QLoRA with precision bf16 where memory is the limit")
    kind = adapter["kind"]
    if kind not in FP8_ADAPTERS:
        error(("adapter", "kind"), f"training.precision fp8 runs LoRA's frozen base or a full fine-tune in FP8, "
              f"not adapter.kind {kind}", "use adapter.kind lora or full, or precision bf16")
    if kind == "lora" and adapter["dora"]:
        error(("adapter", "dora"), "training.precision fp8 cannot take DoRA: DoRA rescales each output by the "
              "norm of the merged weight, which its own forward computes from the bf16 weight", "drop dora, or use "
              "precision bf16")
    if kind == "lora" and training["fused_lora"] is False:
        error(("training", "fused_lora"), "training.precision fp8 with LoRA runs through runner's fused LoRA "
              "function, which training.fused_lora: false turns off", "use fused_lora: auto, or precision bf16")
    if model["dtype"] not in ("auto", "bfloat16"):
        error(("model", "dtype"), f"training.precision fp8 keeps everything but the FP8 matmuls in bf16; "
              f"model.dtype is {model['dtype']}", "use model.dtype: bfloat16 (or auto)")
    backend = cfg["distributed"]["backend"]
    if backend in ("fsdp", "deepspeed"):
        error(("distributed", "backend"), f"training.precision fp8 is not supported with {backend} (its cached "
              "FP8 weights and float8 layers assume whole, unsharded weights)", "use backend ddp or single, "
              "or precision bf16")
