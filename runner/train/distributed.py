"""Launch-time distributed decisions: the world the launcher built (torchrun / accelerate launch env),
`backend: auto` made concrete, launcher/YAML conflicts, the Trainer arguments for each backend, and
the two places where Accelerate needs a nudge (FSDP2 on CPU processes, the final FSDP save).
The Plan (runner.plan.launch_settings) already holds the settings; this fills the deferred parts.
Importing this module is cheap: accelerate / torch are imported inside the functions that use them."""

from __future__ import annotations

import os

from runner.errors import UserError

# NVLink multicast can take a shared host's GPUs out of service; every worker gets these.
SAFE_NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def world() -> dict:
    """Rank and size as the launcher (torchrun or accelerate launch) set them; 1 process otherwise."""
    env = os.environ
    size = int(env.get("WORLD_SIZE", "1"))
    local = int(env.get("LOCAL_WORLD_SIZE", str(size)))
    return {
        "world_size": size,
        "rank": int(env.get("RANK", "0")),
        "local_rank": int(env.get("LOCAL_RANK", "0")),
        "local_world_size": local,
        "num_machines": max(1, size // max(1, local)),
    }


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def concrete_backend(plan, world_size: int) -> str:
    backend = plan.distributed["backend"]
    if backend == "auto":
        return "ddp" if world_size > 1 else "single"
    return backend


def check_launcher(plan) -> None:
    """`accelerate launch --use_fsdp` with `backend: ddp` (and the like) is a conflict, not a guess:
    the error names the launcher's setting and the YAML key."""
    env = os.environ
    backend = plan.distributed["backend"]
    flags = {
        "fsdp": env.get("ACCELERATE_USE_FSDP", "").lower() == "true",
        "deepspeed": env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true",
    }
    for name, on in flags.items():
        if on and backend != name:
            raise UserError(
                f"the launcher was started with {name} (accelerate launch --use_{name} or its config file) "
                f"but distributed.backend is {backend!r}",
                where="distributed.backend",
                hint=f"set distributed.backend: {name}, or launch without {name}: `runner launch cfg.yaml` "
                     "writes the launcher's settings from the YAML",
            )
    precision = env.get("ACCELERATE_MIXED_PRECISION")
    want = plan.training["precision"]
    if precision and precision != "no" and want not in ("auto", precision):
        raise UserError(
            f"the launcher asked for mixed precision {precision} (accelerate launch --mixed_precision) "
            f"but training.precision is {want}",
            where="training.precision", hint="drop --mixed_precision from the launch command, or change the YAML")
    world_size = int(env.get("WORLD_SIZE", "1"))
    if backend == "single" and world_size > 1:
        raise UserError(f"the launcher started {world_size} processes but distributed.backend is 'single'",
                        where="distributed.backend", hint="use backend: ddp (or auto), or launch one process")
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
        out["fsdp"] = True  # everything else through fsdp_config (the string form is deprecated)
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
        from runner.plan.launch_settings import deepspeed_json

        conf = deepspeed_json({"distributed": plan.distributed, "training": plan.training})
        out["deepspeed"] = conf.get("file") or conf
    return out


def decoder_layer_class(model) -> str | None:
    """The class FSDP wraps: a declared no-split module class that the model really contains (PEFT
    wrappers forward the attribute; transformers 5 keeps it as a set), else the class repeated in the
    longest ModuleList (the decoder stack)."""
    present = {type(m).__name__ for m in model.modules()}
    declared = getattr(model, "_no_split_modules", None) or []
    for name in sorted(declared):
        if name in present:
            return name
    best = None
    for module in model.modules():
        kids = list(module.children()) if type(module).__name__ == "ModuleList" else []
        if kids and len({type(k) for k in kids}) == 1 and (best is None or len(kids) > len(best)):
            best = kids
    return type(best[0]).__name__ if best else None


def shard_on_cpu(trainer) -> bool:
    """Make FSDP2 real on CPU processes (gloo). Accelerate turns its FSDP plugin on only for
    accelerator devices: on CPU it keeps MULTI_CPU and wraps the model in DDP without a word, so a
    `backend: fsdp` run on CPU would be a DDP run. Call right after the Trainer is built (before
    `train()` prepares the model); returns whether it switched. A no-op on GPUs and when repeated."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    args, state = trainer.args, trainer.accelerator.state
    if (getattr(args, "fsdp_plugin_args", None) is None or state.distributed_type != DistributedType.MULTI_CPU
            or getattr(state, "fsdp_plugin", None) is not None):
        return False
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    # Both shared states, as Accelerate itself does on GPUs (a later AcceleratorState() copies the
    # PartialState's type back over its own).
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    return True


def prepare_final_save(trainer) -> None:
    """Call on every rank before `trainer.save_model(run_dir)`. Under FSDP the Trainer writes the
    final weights only for FULL_STATE_DICT; with a sharded state dict type (right for checkpoints)
    it silently saves nothing. Switch to the gathered form: the result is ordinary safetensors."""
    if getattr(trainer, "is_fsdp_enabled", False):
        plugin = trainer.accelerator.state.fsdp_plugin
        if "FULL_STATE_DICT" not in str(plugin.state_dict_type):
            plugin.set_state_dict_type("FULL_STATE_DICT")
