"""Liger kernels (fused linear cross-entropy, RMSNorm, RoPE, SwiGLU) on the families runner.train.runtime
picks them for (LIGER_FAMILIES), applied to the base model before an adapter wraps it."""

from __future__ import annotations


def apply_liger(model) -> None:
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True,
                                    cross_entropy=False, fused_linear_cross_entropy=True)
