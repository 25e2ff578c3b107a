"""Full fine-tuning in FP8 (`training.precision: fp8`, adapter.kind full): torchao's float8
training swaps the decoder's nn.Linear layers for Float8Linear (inputs, weights and output
gradients cast to float8 with dynamic scales; weights and optimizer state stay bf16).

Left in bf16: the output head (its logits feed the loss, and FP8 there costs accuracy for a small
share of the FLOPs) and layers whose sizes are not multiples of 16 (torch._scaled_mm's rule). The
casts are separate kernels unless training.torch_compile fuses them; without it the swap is
usually slower than bf16 (decide_runtime warns)."""

from __future__ import annotations

RECIPE = "tensorwise"   # torchao's fastest recipe; "rowwise" is the more accurate one


def fp8_layer(module, fqn: str, head) -> bool:
    """Whether convert_to_float8_training should swap this nn.Linear."""
    return module is not head and module.in_features % 16 == 0 and module.out_features % 16 == 0


def convert_full(model, recipe: str = RECIPE) -> int:
    """Swap the model's eligible Linear layers for torchao Float8Linear; returns how many."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    head = model.get_output_embeddings()
    convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(recipe),
                               module_filter_fn=lambda module, fqn: fp8_layer(module, fqn, head))
    return sum(isinstance(m, Float8Linear) for m in model.modules())
