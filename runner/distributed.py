"""Launch-time distributed decisions: the world the launcher built (torchrun / accelerate launch env),
`backend: auto` made concrete, launcher/YAML conflicts, and the Trainer arguments for each backend.
The Plan (runner.launch_config) already holds the settings; this fills the deferred parts."""

from __future__ import annotations

import os

from runner.errors import UserError

# NVLink multicast can take a shared host's GPUs out of service; every worker gets these.
SAFE_NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def world() -> dict:
    """Rank and size as the launcher (torchrun or accelerate launch) set them; 1 process otherwise."""
    env = os.environ
    return {
        "world_size": int(env.get("WORLD_SIZE", "1")),
        "rank": int(env.get("RANK", "0")),
        "local_rank": int(env.get("LOCAL_RANK", "0")),
        "local_world_size": int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", "1"))),
        "num_machines": max(1, int(env.get("WORLD_SIZE", "1")) // max(1, int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", "1"))))),
    }


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def concrete_backend(plan, world_size: int) -> str:
    backend = plan.distributed["backend"]
    if backend == "auto":
        return "ddp" if world_size > 1 else "single"
    return backend


def check_launcher(plan) -> None:
    """`accelerate launch --use_fsdp` with `backend: ddp` (and the like) is a conflict, not a guess."""
    env = os.environ
    backend = plan.distributed["backend"]
    flags = {
        "fsdp": env.get("ACCELERATE_USE_FSDP", "").lower() == "true",
        "deepspeed": env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true",
    }
    for name, on in flags.items():
        if on and backend != name:
            raise UserError(
                f"the launcher was started with {name} (accelerate launch --use_{name} / its config file) "
                f"but distributed.backend is {backend!r}",
                where="distributed.backend",
                hint=f"set distributed.backend: {name}, or launch without --use_{name} (runner launch needs no flags)",
            )
    precision = env.get("ACCELERATE_MIXED_PRECISION")
    want = plan.training["precision"]
    if precision and precision != "no" and want not in ("auto", precision):
        raise UserError(
            f"the launcher asked for mixed precision {precision} but training.precision is {want}",
            where="training.precision", hint="drop --mixed_precision from the launch command, or change the YAML")
    world_size = int(env.get("WORLD_SIZE", "1"))
    planned = plan.distributed["num_processes"]
    machines = plan.distributed["num_machines"]
    if planned and world_size > 1 and world_size != planned * machines:
        raise UserError(
            f"the launcher started {world_size} processes but distributed.num_processes x num_machines is "
            f"{planned} x {machines}", where="distributed.num_processes",
            hint="use `runner launch cfg.yaml`, or make the launcher's --num_processes match")


def trainer_kwargs(plan, backend: str, wrap_class: str | None, device: str) -> dict:
    """Arguments for transformers.TrainingArguments that carry out the Plan's backend."""
    out: dict = {}
    if device == "cpu":
        out["ddp_backend"] = "gloo"
    if backend in ("ddp", "fsdp", "deepspeed"):
        out["ddp_find_unused_parameters"] = False
    if backend == "fsdp":
        f = plan.distributed["fsdp"]
        out["fsdp"] = "full_shard auto_wrap" if f["reshard_after_forward"] else "shard_grad_op auto_wrap"
        out["fsdp_config"] = {
            "version": 2,
            "reshard_after_forward": f["reshard_after_forward"],
            "cpu_offload": f["cpu_offload"],
            "state_dict_type": "FULL_STATE_DICT" if f["state_dict_type"] == "full" else "SHARDED_STATE_DICT",
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "activation_checkpointing": f["activation_checkpointing"],
            "cpu_ram_efficient_loading": False,
        }
        if f["wrap_class"] or wrap_class:
            out["fsdp_config"]["transformer_layer_cls_to_wrap"] = [f["wrap_class"] or wrap_class]
    if backend == "deepspeed":
        from runner.launch_config import deepspeed_json

        conf = deepspeed_json({"distributed": plan.distributed, "training": plan.training})
        out["deepspeed"] = conf.get("file") or conf
    return out


def decoder_layer_class(model) -> str | None:
    """The class FSDP wraps: the model's declared no-split module, else the repeated layer class."""
    names = getattr(model, "_no_split_modules", None) or []
    if names:
        return names[0]
    layers = getattr(getattr(model, "model", None), "layers", None)
    return type(layers[0]).__name__ if layers is not None and len(layers) else None
