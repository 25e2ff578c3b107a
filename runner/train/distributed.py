"""Distributed execution: the world the launcher built (torchrun / accelerate launch env), launcher
vs YAML conflicts, a one-process group for FSDP without a launcher, and the two places where
Accelerate needs a nudge (FSDP2 on CPU processes, the final FSDP save). The decisions (backend, wrap
class) are runner.train.runtime's. Importing this module is cheap: accelerate / torch are imported
inside the functions that use them."""

from __future__ import annotations

import os

from runner.errors import UserError

# NVLink multicast can take a shared host's GPUs out of service; every worker gets these.
SAFE_NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def check_launcher(plan) -> None:
    """`accelerate launch --use_fsdp` with `backend: ddp` (and the like) is a conflict, not a guess:
    the error names the launcher's setting and the YAML key."""
    env = os.environ
    backend = plan.distributed.backend
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
    want = plan.training.precision
    if precision and precision != "no" and want not in ("auto", precision) and (want, precision) != ("fp8", "bf16"):
        raise UserError(
            f"the launcher asked for mixed precision {precision} (accelerate launch --mixed_precision) "
            f"but training.precision is {want}",
            where="training.precision", hint="drop --mixed_precision from the launch command, or change the YAML")
    world_size = int(env.get("WORLD_SIZE", "1"))
    if backend == "single" and world_size > 1:
        raise UserError(f"the launcher started {world_size} processes but distributed.backend is 'single'",
                        where="distributed.backend", hint="use backend: ddp (or auto), or launch one process")
    planned = plan.distributed.num_processes
    machines = plan.distributed.num_machines
    if planned and world_size > 1 and world_size != planned * machines:
        raise UserError(
            f"the launcher started {world_size} processes but distributed.num_processes x num_machines is "
            f"{planned} x {machines}", where="distributed.num_processes",
            hint="use `runner launch cfg.yaml`, or make the launcher's --num_processes match")


def single_process_group() -> None:
    """FSDP needs a process group even on one device; without a launcher, be a world of one (what
    `torchrun --nproc_per_node 1` would set)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


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
