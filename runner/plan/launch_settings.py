"""The Accelerate settings and DeepSpeed JSON a config asks for, computed in the Plan so that `runner
plan` shows them and `runner launch` writes them; nothing here imports accelerate or deepspeed.

Two stages: `accelerate_settings` (in the Plan; values only the launch machine knows are marked
"deferred" / "env") and `accelerate_file` (what `runner launch` writes into the run directory, every
value concrete, in the layout `accelerate launch --config_file` reads)."""

from __future__ import annotations

import json
from pathlib import Path

# fp8: Accelerate runs bf16 autocast; runner swaps the FP8 matmuls in itself (not Accelerate's own fp8).
_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no", "auto": "auto", "fp8": "bf16"}
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
    nvme = {"nvme_path": ds["nvme_path"]}
    if ds["offload_optimizer"] != "none":
        zero["offload_optimizer"] = {"device": ds["offload_optimizer"], "pin_memory": True,
                                     **(nvme if ds["offload_optimizer"] == "nvme" else {})}
    if ds["offload_params"] != "none":
        zero["offload_param"] = {"device": ds["offload_params"], "pin_memory": True,
                                 **(nvme if ds["offload_params"] == "nvme" else {})}
    precision = cfg["training"]["precision"]
    # ZeRO-Offload refuses the Trainer's torch optimizer (zero_force_ds_cpu_optimizer): DeepSpeed builds
    # its CPU Adam from this section, the Trainer fills the "auto" values from the YAML.
    optimizer = ({"optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                            "weight_decay": "auto"}}}
                 if ds["offload_optimizer"] != "none" and stage >= 1 else {})
    return {
        **optimizer,
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
            del fsdp["fsdp_transformer_layer_cls_to_wrap"]  # found in the model at launch (runner.train.distributed)
        out["fsdp_config"] = fsdp
    if "deepspeed_config" in out:
        conf = out["deepspeed_config"]
        path = conf["file"] if "file" in conf else str(Path(run_dir) / DEEPSPEED_FILE)
        stage3 = "file" not in conf and conf["zero_optimization"]["stage"] == 3
        out["deepspeed_config"] = {"deepspeed_config_file": path, "zero3_init_flag": stage3}
        # Precision lives in the DeepSpeed JSON (filled by the Trainer): Accelerate's workers refuse a
        # config file that sets mixed_precision beside a deepspeed_config_file.
        del out["mixed_precision"]
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


# --- semantic checks of the distributed section (called from runner.config.checks.check) ---

def read_user_deepspeed(path: str) -> tuple[dict | None, str | None]:
    """(the user's DeepSpeed JSON, or None with a reason naming file:line:column)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return None, f"cannot read {path}: {err.__class__.__name__}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg})"
    if not isinstance(data, dict):
        return None, f"{path}: a DeepSpeed config is a JSON object, not {type(data).__name__}"
    return data, None


def zero_stage(cfg: dict) -> int | None:
    """The ZeRO stage that will run: the user's file wins over distributed.deepspeed.zero_stage."""
    dist = cfg["distributed"]
    if dist["backend"] != "deepspeed":
        return None
    if dist["deepspeed"]["config"]:
        return _file_stage(read_user_deepspeed(dist["deepspeed"]["config"])[0])
    return dist["deepspeed"]["zero_stage"]


def sharded(cfg: dict) -> bool:
    """Whether the run's parameters are sharded across processes (FSDP, or ZeRO stage 3): the one
    place this rule lives; the Plan records it as distributed.sharded."""
    return cfg["distributed"]["backend"] == "fsdp" or zero_stage(cfg) == 3


def _file_stage(data: dict | None) -> int:
    zero = (data or {}).get("zero_optimization") or {}
    stage = zero.get("stage")
    return stage if isinstance(stage, int) else 0


def check_distributed(cfg: dict, raw: dict) -> list[tuple[str, tuple, str, str | None]]:
    """Findings as (severity "error" | "warning", key path, message, hint). `cfg` has defaults
    filled; `raw` is the config as written (to tell keys the user set from defaults)."""
    found: list = []
    dist, training, adapter = cfg["distributed"], cfg["training"], cfg["adapter"]
    raw_dist = raw.get("distributed") or {}
    backend, ds = dist["backend"], dist["deepspeed"]
    machines, nproc = dist["num_machines"], dist["num_processes"]

    if backend == "single" and ((nproc or 1) > 1 or machines > 1):
        found.append(("error", ("distributed", "backend"),
                      f"backend single runs one process, but num_processes x num_machines is {nproc or 1} x {machines}",
                      "use backend: ddp (or auto), or drop num_processes / num_machines"))
    if dist["machine_rank"] is not None and dist["machine_rank"] >= machines:
        found.append(("error", ("distributed", "machine_rank"),
                      f"machine_rank {dist['machine_rank']} does not exist with num_machines {machines} (ranks 0..{machines - 1})",
                      "leave machine_rank out of the shared YAML and pass --machine-rank on each machine"))
    for section, owner in (("fsdp", "fsdp"), ("deepspeed", "deepspeed")):
        if raw_dist.get(section) and backend != owner:
            found.append(("warning", ("distributed", section),
                          f"these settings apply to backend {owner}, but the backend is {backend}; ignored"))
    if backend == "deepspeed" and not ds["config"]:
        if ds["offload_params"] != "none" and ds["zero_stage"] != 3:
            found.append(("error", ("distributed", "deepspeed", "offload_params"),
                          f"parameter offload needs ZeRO stage 3 (zero_stage is {ds['zero_stage']})",
                          "set zero_stage: 3, or offload only the optimizer (offload_optimizer)"))
        if ds["offload_optimizer"] != "none" and ds["zero_stage"] == 0:
            found.append(("error", ("distributed", "deepspeed", "offload_optimizer"),
                          "optimizer offload needs ZeRO stage 1, 2 or 3 (zero_stage is 0)", "set zero_stage: 2"))
        if ds["offload_optimizer"] != "none" and training["optimizer"] not in ("adamw_torch", "adamw_torch_fused"):
            found.append(("warning", ("training", "optimizer"),
                          f"with offload_optimizer DeepSpeed's own (CPU) AdamW runs; {training['optimizer']} is not used",
                          "set training.optimizer: adamw_torch, or offload only the parameters"))
        for key in ("offload_optimizer", "offload_params"):
            if ds[key] == "nvme" and not ds["nvme_path"]:
                found.append(("error", ("distributed", "deepspeed", key),
                              "NVMe offload needs a folder on a local NVMe disk",
                              "set distributed.deepspeed.nvme_path: /local_nvme/deepspeed (or use cpu)"))
    if backend == "deepspeed" and ds["config"]:
        data, problem = read_user_deepspeed(ds["config"])
        found += _check_user_deepspeed(ds["config"], data, problem, training, nproc * machines if nproc else None)
    from runner.plan.parallelism import check_parallelism

    found += check_parallelism(cfg)
    if sharded(cfg) and adapter["kind"] == "lora" and str(adapter["init"]).startswith("pissa"):
        found.append(("warning", ("adapter", "init"),
                      "a PiSSA adapter trained with sharded parameters is saved unconverted: it applies to the "
                      "residual base, not to the original model", "use backend: ddp for PiSSA, or init: default"))
    return found


def _check_user_deepspeed(path: str, data: dict | None, problem: str | None, training: dict,
                          world: int | None) -> list:
    where = ("distributed", "deepspeed", "config")
    if data is None:
        return [("error", where, problem, "fix the file, or remove distributed.deepspeed.config to use runner's")]
    found = []
    micro, accum = training["micro_batch_size"], training["gradient_accumulation"]
    pairs = [("train_micro_batch_size_per_gpu", micro, "training.micro_batch_size"),
             ("gradient_accumulation_steps", accum, "training.gradient_accumulation"),
             ("gradient_clipping", training["max_grad_norm"], "training.max_grad_norm")]
    for key, ours, our_key in pairs:
        theirs = data.get(key)
        if isinstance(theirs, (int, float)) and not isinstance(theirs, bool) and ours is not None and theirs != ours:
            found.append(("error", where, f"{Path(path).name} sets {key}: {theirs} but {our_key} is {ours}",
                          f'write "{key}": "auto" in the file (the YAML then decides), or make them equal'))
    total = data.get("train_batch_size")
    if isinstance(total, int) and not isinstance(total, bool):
        if world and total != micro * accum * world:
            found.append(("error", where, f"{Path(path).name} sets train_batch_size: {total} but micro_batch_size x "
                          f"gradient_accumulation x processes is {micro} x {accum} x {world} = {micro * accum * world}",
                          'write "train_batch_size": "auto"'))
        elif not world and total % (micro * accum):
            found.append(("error", where, f"{Path(path).name} sets train_batch_size: {total}, which "
                          f"micro_batch_size x gradient_accumulation ({micro * accum}) does not divide",
                          'write "train_batch_size": "auto"'))
    precision = training["precision"]
    for kind in ("bf16", "fp16"):
        enabled = (data.get(kind) or {}).get("enabled") if isinstance(data.get(kind), dict) else None
        if enabled is True and precision not in ("auto", kind):
            found.append(("error", where, f"{Path(path).name} enables {kind} but training.precision is {precision}",
                          f'write "{kind}": {{"enabled": "auto"}} in the file, or set training.precision: {kind}'))
    return found
