"""Selective activation checkpointing: `training.gradient_checkpointing: N` recomputes only the first
N decoder layers (the Trainer turns checkpointing on for all of them; this turns it back off on the
rest). How many is decided in runner.train.runtime (fast_path.checkpointed_layers)."""

from __future__ import annotations


def checkpointable(model) -> list:
    """The layers that can recompute, in order; of a vision-language model, its language model's
    (the vision encoder's blocks keep what the Trainer set: all recompute)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from runner.train.vision import part_of

    found = [(name, m) for name, m in model.named_modules() if isinstance(m, GradientCheckpointingLayer)]
    language = [m for name, m in found if part_of(name) == "language"]
    return language or [m for _, m in found]


def checkpoint_callback(count: int):
    """A TrainerCallback that, once the Trainer has turned checkpointing on for every decoder layer
    (train begin), keeps it only on the first `count`."""
    from transformers import TrainerCallback

    class SelectiveCheckpointing(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            layers = checkpointable(model) if model is not None else []
            for i, layer in enumerate(layers):
                layer.gradient_checkpointing = bool(layer.gradient_checkpointing) and i < count

    return SelectiveCheckpointing()
