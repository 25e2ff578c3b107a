"""Liger kernels (fused linear cross-entropy, RMSNorm, RoPE, SwiGLU) on the families runner.train.runtime
picks them for (LIGER_FAMILIES), applied to the base model before an adapter wraps it."""

from __future__ import annotations


def apply_liger(model, layers: bool = True) -> None:
    """layers False (training.torch_compile): the fused linear cross-entropy only. Dynamo cannot trace
    Liger's RMSNorm / RoPE / SwiGLU kernels and would break each compiled layer's graph around them;
    the compiled layer fuses those operations itself."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, rope=layers, rms_norm=layers, swiglu=layers,
                                    cross_entropy=False, fused_linear_cross_entropy=True)
