"""training.precision fp8 at launch: what the GPU and the installed packages must offer
(runner.config.checks_fp8 refuses, before anything loads, what needs no hardware). Called by
runner.train.runtime.decide_runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner.errors import UserError

if TYPE_CHECKING:
    from runner.plan.plan import Plan
    from runner.train.runtime import Environment

FP8_CAPABILITY = (8, 9)  # Ada and Hopper: the first NVIDIA GPUs with float8 tensor cores


def check_fp8(plan: "Plan", env: "Environment", dtype: str) -> None:
    """training.precision fp8 needs float8 matmuls on this GPU, a bf16 model and, for a full
    fine-tune, torchao (runner.config.checks_fp8 refuses what needs no hardware)."""
    where = "training.precision"
    if env.device != "cuda":
        raise UserError(f"training.precision fp8 needs an NVIDIA GPU with float8 tensor cores; this device is "
                        f"{env.device}", where=where, hint="use precision bf16 (or auto) here")
    cap = env.compute_capability
    if cap is not None and tuple(cap) < FP8_CAPABILITY:
        raise UserError(f"training.precision fp8 needs compute capability 8.9 or newer (Ada, Hopper, Blackwell); "
                        f"this GPU has {cap[0]}.{cap[1]}", where=where, hint="use precision bf16 on this GPU")
    if dtype != "bfloat16":
        raise UserError(f"training.precision fp8 keeps the model in bf16, but its dtype is {dtype}",
                        where="model.dtype", hint="use model.dtype: bfloat16 (or auto)")
    if plan.adapter.kind != "lora" and not env.torchao_available:
        raise UserError("training.precision fp8 for a full fine-tune uses torchao's float8 training, and torchao is "
                        "not installed", where=where, hint="pip install torchao (or precision bf16)")
