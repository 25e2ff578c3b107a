"""training.torch_compile: torch.compile each decoder layer on its own ("regional" compilation).

A model's decoder layers are one class with the same shapes, so one compilation serves them all
(seconds to a minute, where a whole-model graph takes minutes), and the code outside them stays
eager: embeddings, the LM head and the loss (Liger's fused linear cross-entropy or runner's chunked
loss, neither of which Dynamo traces well). Inside a layer the compiled code fuses the norms, the
rotary embedding, the MLP's activation and the residual adds; the attention kernel runs as the
Runtime chose it, varlen's function outside the graph (runner.train.fast.varlen). Gradient
checkpointing wraps the compiled layer. Measured on an H100 (bench/fp8_check.py part d, a 3B full
fine-tune on packed rows): compiled layers with varlen 1.23x the eager varlen step, 1.09x compiled
layers with sdpa's packed mask."""

from __future__ import annotations


def compile_layers(model) -> int:
    """Compile the decoder layers in place (nn.Module.compile: the module stays the same object, its
    parameters and state dict keys unchanged); returns how many."""
    from runner.train.fast.checkpointing import checkpointable

    layers = checkpointable(model)
    for layer in layers:
        layer.compile()
    return len(layers)
