"""The Accelerate settings and DeepSpeed JSON a config asks for, computed in the Plan so that `runner
plan` shows them and `runner launch` writes them; nothing here imports accelerate or deepspeed.

Two stages: `accelerate_settings` (in the Plan; values only the launch machine knows are marked
"deferred" / "env") and `accelerate_file` (what `runner launch` writes into the run directory, every
value concrete, in the layout `accelerate launch --config_file` reads)."""

from __future__ import annotations

import json
from pathlib import Path

_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no", "auto": "auto"}
DISTRIBUTED_TYPE = {"single": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}
DEEPSPEED_FILE = "deepspeed.json"
ACCELERATE_FILE = "accelerate_config.yaml"


def deepspeed_json(cfg: dict) -> dict:
    """A ZeRO config whose batch sizes, clipping and precision the Trainer fills ("auto"), so the
    YAML stays the one place they are set. A user file is used as is: {"file": path}."""
    ds = cfg["distributed"]["deepspeed"]
    if ds["config"]:
        return {"file": ds["config"]}
    stage = ds["zero_stage"]
    zero: dict = {"stage": stage, "overlap_comm": stage >= 2, "contiguous_gradients": stage >= 2}
    if stage >= 2:
        zero.update(reduce_bucket_size="auto", allgather_bucket_size=500_000_000)
    if stage == 3:
        # The "auto" sizes are derived from the model's hidden size by the Trainer; gathering the
        # 16-bit weights on save is what makes the final model ordinary safetensors.
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
    """What `accelerate launch` will read for this run, as far as the config alone decides it."""
    dist, training = cfg["distributed"], cfg["training"]
    backend = dist["backend"]
    out: dict = {
        "distributed_type": DISTRIBUTED_TYPE.get(backend, "deferred"),
        "mixed_precision": _PRECISION[training["precision"]],
        "num_processes": dist["num_processes"] * dist["num_machines"] if dist["num_processes"] else "deferred",
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
            # Every rank loads the weights itself: rank-0-only loading needs the Trainer's plugin to
            # broadcast them, and transformers decides it before the Trainer exists.
            "fsdp_cpu_ram_efficient_loading": False,
        }
    if backend == "deepspeed":
        out["deepspeed_config"] = deepspeed_json(cfg)
    return out


def accelerate_file(settings: dict, *, backend: str, num_processes: int, machine_rank: int, address: str,
                    port: int, cpu: bool, run_dir: Path) -> dict:
    """The Plan's settings with this machine's values filled in: the accelerate_config.yaml
    `runner launch` writes. `num_processes` is per machine; Accelerate wants the total."""
    out = {"compute_environment": "LOCAL_MACHINE", **settings}
    ddp_type = "MULTI_CPU" if cpu else "MULTI_GPU"
    out.update(
        distributed_type={**DISTRIBUTED_TYPE, "ddp": ddp_type}[backend],
        num_processes=num_processes * settings["num_machines"],
        machine_rank=machine_rank, main_process_ip=address, main_process_port=port,
        use_cpu=cpu, gpu_ids="all", downcast_bf16="no", main_training_function="main",
    )
    if out["mixed_precision"] == "auto":
        out["mixed_precision"] = "no" if cpu else "bf16"
    if "fsdp_config" in out:
        fsdp = dict(out["fsdp_config"])
        if fsdp["fsdp_transformer_layer_cls_to_wrap"] == "deferred":
            del fsdp["fsdp_transformer_layer_cls_to_wrap"]  # found in the model at launch (runner.distributed)
        out["fsdp_config"] = fsdp
    if "deepspeed_config" in out:
        conf = out["deepspeed_config"]
        path = conf["file"] if "file" in conf else str(Path(run_dir) / DEEPSPEED_FILE)
        stage3 = "file" not in conf and conf["zero_optimization"]["stage"] == 3
        out["deepspeed_config"] = {"deepspeed_config_file": path, "zero3_init_flag": stage3}
    return out


def write_launch_files(settings_file: dict, cfg: dict, run_dir: Path) -> list[Path]:
    """accelerate_config.yaml (+ deepspeed.json unless the user gave a file) in the run directory."""
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    written = [run_dir / ACCELERATE_FILE]
    written[0].write_text(yaml.safe_dump(settings_file, sort_keys=True))
    if cfg["distributed"]["backend"] == "deepspeed":
        conf = deepspeed_json(cfg)
        if "file" not in conf:
            path = run_dir / DEEPSPEED_FILE
            path.write_text(json.dumps(conf, indent=2) + "\n")
            written.append(path)
    return written
