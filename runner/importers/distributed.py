"""FSDP and DeepSpeed settings as both Axolotl and LLaMA-Factory (through transformers' TrainingArguments
and Accelerate) write them -> runner's `distributed` section."""

from __future__ import annotations

import json
import re
from pathlib import Path

from runner.importers.common import Translation, is_unset, locate, relative_to_output

_FSDP2_GONE = {"use_orig_params", "sync_module_states", "backward_prefetch", "backward_prefetch_policy",
               "forward_prefetch", "limit_all_gathers", "version"}
_STATE_DICT = {"FULL_STATE_DICT": "full", "SHARDED_STATE_DICT": "sharded"}
_SHARDING = {"FULL_SHARD": True, "1": True, "SHARD_GRAD_OP": False, "2": False}


def fsdp_from_config(options: list[str], config: dict, tr: Translation, prefix: str) -> None:
    """`options`: the `fsdp:` list/string (full_shard, shard_grad_op, auto_wrap, offload); `config`: fsdp_config."""
    words = [w for option in options for w in str(option).split()]
    for word in words:
        if word == "offload":
            tr.set("distributed.fsdp.cpu_offload", True)
        elif word == "shard_grad_op":
            tr.set("distributed.fsdp.reshard_after_forward", False)
        elif word not in ("full_shard", "auto_wrap"):
            tr.skip(f"fsdp.{word}", word, "runner's FSDP2 shards fully (full_shard) or keeps parameters after forward (shard_grad_op)")
    for raw_key, value in config.items():
        key = raw_key[5:] if raw_key.startswith("fsdp_") else raw_key
        where = f"{prefix}.{raw_key}" if prefix else raw_key
        if is_unset(value):
            tr.idle.append(where)
        elif key == "offload_params":
            tr.set("distributed.fsdp.cpu_offload", bool(value))
        elif key == "state_dict_type":
            if str(value) in _STATE_DICT:
                tr.set("distributed.fsdp.state_dict_type", _STATE_DICT[str(value)])
            else:
                tr.skip(where, value, "runner keeps full or sharded state dicts")
        elif key == "transformer_layer_cls_to_wrap":
            names = value if isinstance(value, list) else str(value).split(",")
            if len(names) == 1:
                tr.set("distributed.fsdp.wrap_class", names[0].strip())
            else:
                tr.skip(where, value, "runner wraps one layer class")
        elif key == "activation_checkpointing":
            tr.set("distributed.fsdp.activation_checkpointing", bool(value))
            if value and tr.get("training.gradient_checkpointing"):
                tr.set("training.gradient_checkpointing", False)
                tr.note(where, "FSDP activation checkpointing replaces gradient_checkpointing (one of the two)")
        elif key == "reshard_after_forward":
            tr.set("distributed.fsdp.reshard_after_forward", bool(value))
        elif key == "sharding_strategy":
            if str(value) in _SHARDING:
                tr.set("distributed.fsdp.reshard_after_forward", _SHARDING[str(value)])
            else:
                tr.skip(where, value, "runner supports FULL_SHARD and SHARD_GRAD_OP")
        elif key == "auto_wrap_policy":
            if value != "TRANSFORMER_BASED_WRAP":
                tr.skip(where, value, "runner wraps each decoder layer (TRANSFORMER_BASED_WRAP)")
        elif key in _FSDP2_GONE:
            tr.note(where, "not used by FSDP2")
        else:
            tr.skip(where, value, "no such FSDP setting in runner")


def _stage_from_name(name: str) -> int | None:
    match = re.search(r"(?:zero|_z)([0-3])", name.lower())
    return int(match.group(1)) if match else None


def deepspeed_from_file(path_text: str, tr: Translation, key: str, bases: list[Path],
                        out_dir: Path | None = None) -> None:
    """A DeepSpeed JSON: used as is when readable (stage and offload copied for the plan to show),
    else its stage and offload are inferred from the file name, as the tools' stock files are named."""
    found = locate(path_text, bases)
    if found is not None and found.is_file():
        try:
            settings = json.loads(found.read_text())
        except (OSError, ValueError) as err:
            tr.skip(key, path_text, f"cannot read the DeepSpeed file: {err}")
            return
        zero = settings.get("zero_optimization") or {}
        stage = zero.get("stage")
        if stage in (0, 1, 2, 3):
            tr.set("distributed.deepspeed.zero_stage", stage)
        for section, target in (("offload_optimizer", "offload_optimizer"), ("offload_param", "offload_params")):
            device = (zero.get(section) or {}).get("device")
            if device in ("cpu", "nvme", "none"):
                tr.set(f"distributed.deepspeed.{target}", device)
        where = relative_to_output(found, out_dir) if out_dir else str(found)
        tr.set("distributed.deepspeed.config", where)
        tr.note(key, "the DeepSpeed file is used as is (runner fills in batch sizes)")
        return
    name = Path(path_text).name
    stage = _stage_from_name(name)
    if stage is None:
        tr.set("distributed.deepspeed.zero_stage", 2)
        tr.skip(key, path_text, "file not found and its name names no ZeRO stage; runner's default stage 2 is used")
        return
    tr.set("distributed.deepspeed.zero_stage", stage)
    lower = name.lower()
    if "offload" in lower:
        everything = "all" in lower or ("param" not in lower and stage == 3)
        if everything or "param" in lower:
            tr.set("distributed.deepspeed.offload_params", "cpu")
        if everything or "param" not in lower:
            tr.set("distributed.deepspeed.offload_optimizer", "cpu")
    tr.note(key, f"{path_text} was not found here; ZeRO stage and offload were read from its name")
