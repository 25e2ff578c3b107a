"""The Accelerate settings and DeepSpeed JSON a config asks for, computed in the Plan so that `runner
plan` shows them and `runner launch` writes them; nothing here imports accelerate or deepspeed."""

from __future__ import annotations

import json
from pathlib import Path

_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no", "auto": "auto"}


def deepspeed_json(cfg: dict) -> dict:
    """A ZeRO config with the batch sizes Accelerate fills from the Trainer ("auto")."""
    ds = cfg["distributed"]["deepspeed"]
    if ds["config"]:
        return {"file": ds["config"]}
    zero: dict = {"stage": ds["zero_stage"], "overlap_comm": True, "contiguous_gradients": True}
    if ds["zero_stage"] >= 2:
        zero.update(reduce_bucket_size="auto", allgather_bucket_size=5e8)
    if ds["zero_stage"] == 3:
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                    stage3_gather_16bit_weights_on_model_save=True)
    if ds["offload_optimizer"] != "none":
        zero["offload_optimizer"] = {"device": ds["offload_optimizer"], "pin_memory": True}
    if ds["offload_params"] != "none":
        zero["offload_param"] = {"device": ds["offload_params"], "pin_memory": True}
    precision = cfg["training"]["precision"]
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "bf16": {"enabled": "auto" if precision == "auto" else precision == "bf16"},
        "fp16": {"enabled": "auto" if precision == "auto" else precision == "fp16"},
        "zero_optimization": zero,
    }


def accelerate_settings(cfg: dict) -> dict:
    """What `accelerate launch` would read from its config file, for this run."""
    dist, training = cfg["distributed"], cfg["training"]
    backend = dist["backend"]
    kind = {"auto": "deferred", "single": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}[backend]
    out: dict = {
        "distributed_type": kind,
        "mixed_precision": _PRECISION[training["precision"]],
        "num_processes": dist["num_processes"] or "deferred",
        "num_machines": dist["num_machines"],
        "machine_rank": dist["machine_rank"] if dist["machine_rank"] is not None else "env",
        "main_process_ip": dist["main_address"],
        "main_process_port": dist["main_port"],
        "rdzv_backend": "static",
        "same_network": True,
    }
    if backend == "fsdp":
        f = dist["fsdp"]
        out["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_reshard_after_forward": f["reshard_after_forward"],
            "fsdp_offload_params": f["cpu_offload"],
            "fsdp_state_dict_type": "FULL_STATE_DICT" if f["state_dict_type"] == "full" else "SHARDED_STATE_DICT",
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": f["wrap_class"] or "deferred",
            "fsdp_activation_checkpointing": f["activation_checkpointing"],
            "fsdp_cpu_ram_efficient_loading": True,
        }
    if backend == "deepspeed":
        out["deepspeed_config"] = deepspeed_json(cfg)
    return out


def write_deepspeed_json(cfg: dict, run_dir: Path) -> Path | None:
    if cfg["distributed"]["backend"] != "deepspeed":
        return None
    conf = deepspeed_json(cfg)
    if "file" in conf:
        return Path(conf["file"])
    path = run_dir / "deepspeed.json"
    path.write_text(json.dumps(conf, indent=2))
    return path
