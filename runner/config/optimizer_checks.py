"""Plan-time refusals for the memory-saving optimizers (training.optimizer): GaLore and APOLLO
(transformers' galore_* / apollo_*), their layerwise variants, and Muon. No torch here."""

from __future__ import annotations

import importlib.util


def low_rank(optimizer: str) -> bool:
    return optimizer.startswith(("galore_", "apollo_"))


def layerwise(optimizer: str) -> bool:
    return optimizer.endswith("_layerwise")


PACKAGES = {"galore_": ("galore_torch", "galore-torch"), "apollo_": ("apollo_torch", "apollo-torch")}


def check_optimizer(cfg: dict, raw: dict, error, warn) -> None:
    training, adapter, dist = cfg["training"], cfg["adapter"], cfg["distributed"]
    name = training["optimizer"]
    raw_training = raw.get("training") or {}
    at = ("training", "optimizer")
    if low_rank(name) or name == "muon":
        if adapter["kind"] not in ("full", "none"):
            error(at, f"{name} is for full fine-tuning; with adapter.kind: {adapter['kind']} the trained weights are "
                  "already small", "set adapter.kind: full, or use adamw_torch_fused with the adapter")
        if dist["backend"] in ("fsdp", "deepspeed"):
            error(at, f"{name} needs whole weight matrices; {dist['backend']} shards them",
                  "use distributed.backend: ddp (or single), or another optimizer")
    for prefix, (module, package) in PACKAGES.items():
        if name.startswith(prefix) and importlib.util.find_spec(module) is None:
            error(at, f"{name} needs the {package} package, which is not installed here", f"pip install {package}")
    if layerwise(name):
        # Each parameter is updated by its own optimizer as soon as its gradient is ready (during
        # backward): there is no step to accumulate into, no averaged gradient, nothing to skip.
        if training["gradient_accumulation"] != 1:
            error(("training", "gradient_accumulation"), f"{name} updates every parameter during backward and cannot "
                  "accumulate gradients", "set gradient_accumulation: 1 (raise micro_batch_size instead), or use "
                  f"{name.removesuffix('_layerwise')}")
        several = (dist["num_processes"] or 1) * dist["num_machines"] > 1 or dist["backend"] == "ddp"
        if several:
            error(("distributed", "backend"), f"{name} cannot run on several processes (DDP averages gradients "
                  "after backward; the layerwise update has already happened)",
                  f"train on one process, or use {name.removesuffix('_layerwise')}")
        if training["max_nonfinite"] > 0:
            error(("training", "max_nonfinite"), f"{name} applies each update during backward, before a non-finite "
                  "step could be skipped", "set max_nonfinite: 0 (the run stops at the first one)")
        if "max_grad_norm" in raw_training and training["max_grad_norm"]:
            warn(("training", "max_grad_norm"), f"{name} updates each parameter before the whole gradient's norm is "
                 "known: clipping is off", "remove max_grad_norm")
    if not low_rank(name):
        for key in ("optim_target_modules", "low_rank"):
            if key in raw_training:
                warn(("training", key), f"applies to galore_* / apollo_* optimizers; the optimizer is {name}: ignored")
    if name != "muon" and "muon" in raw_training:
        warn(("training", "muon"), f"applies to optimizer: muon; the optimizer is {name}: ignored")
    if name.startswith("galore_") and any(k.startswith("apollo_") for k in (raw_training.get("low_rank") or {})):
        warn(("training", "low_rank"), "apollo_* settings apply to APOLLO; the optimizer is GaLore: ignored")
