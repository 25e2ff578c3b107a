"""Keys of both tools that ask for FP8 matmuls, for rows split over several GPUs (ring attention or
Ulysses) and for packed vision-language rows -> `training.precision: fp8`,
`distributed.context_parallel` / `sequence_parallel` and `sequence.packing`.

Each request is judged against the rest of the imported config by runner's own checks
(runner/config/checks_fp8.py, runner/plan/parallelism.py, runner/data/vlm.py). Where runner can serve
it by picking an implementation (the backend when the source named none, the attention kernel) that
is set and noted; where it cannot, the key is reported as not mapped with runner's reason, so that the
result still lints. Called once the rest of the config is translated."""

from __future__ import annotations

import copy
import json
import re

from runner.importers.common import Translation, as_number, locate

RING, ULYSSES = "ring", "ulysses"


def _filled(tr: Translation) -> dict:
    from runner.config.schema import fill_defaults

    return fill_defaults(copy.deepcopy(tr.config))


def fp8(tr: Translation, key: str, value) -> None:
    """`key: value` asks for FP8 mixed precision: runner's `training.precision: fp8` where the
    config allows it, else reported with the reason runner would refuse it."""
    trial = _filled(tr)
    trial["training"]["precision"] = "fp8"
    refusals: list[str] = []

    def refuse(path, message, hint=None):
        refusals.append(message)

    from runner.config.checks_fp8 import check_fp8

    check_fp8(trial, refuse)
    if refusals:
        precision = tr.get("training.precision") or "auto"
        tr.skip(key, value, f"{refusals[0]}; the run keeps precision {precision}")
        return
    tr.set("training.precision", "fp8")
    how = ("LoRA's frozen base weights are cached in float8 for their matmuls" if tr.get("adapter.kind") == "lora"
           else "full fine-tuning through torchao's float8 layers (pip install torchao)")
    tr.note(key, f"training.precision: fp8: bf16 except the decoder's linear matmuls ({how}); needs an "
                 "sm89+ GPU (Ada, Hopper)")


def fp8_all_gather(tr: Translation, key: str, value) -> None:
    """FSDP2's float8 all-gather: only meaningful with FP8 under FSDP, which runner's fp8 refuses."""
    if value is False:
        tr.idle.append(key)
    else:
        tr.skip(key, value, "FSDP2's float8 all-gather of sharded weights; runner's fp8 precision does not run "
                            "under FSDP, so there is nothing to gather in float8")


def split_rows(tr: Translation, key: str, value, kind: str, packing_key: str) -> None:
    """`key: value` splits each row over `value` GPUs (`kind`: how the source does it, RING or
    ULYSSES). Under DeepSpeed runner splits with Ulysses (`sequence_parallel`), under FSDP with ring
    attention (`context_parallel`); with no backend named, the one that matches `kind`."""
    size = as_number(value, key, tr, integer=True)
    if size is None:
        return
    if size == 1:
        tr.idle.append(key)
        return
    if size < 1:
        tr.skip(key, value, "a number of GPUs per row, 1 or more")
        return
    from runner.plan.parallelism import SPLIT_STAGES, check_parallelism

    stage = tr.get("training.stage") or "sft"
    if stage not in SPLIT_STAGES:
        tr.skip(key, size, f"runner splits rows only for stages {' and '.join(SPLIT_STAGES)}: stage {stage} scores "
                           "whole sequences (pairs, rewards or generations) and cannot take a piece of one")
        return
    backend = tr.get("distributed.backend")
    ulysses = backend == "deepspeed" or (backend != "fsdp" and kind == ULYSSES)
    target, need = ("sequence_parallel", "deepspeed") if ulysses else ("context_parallel", "fsdp")
    if backend != need:
        tr.set("distributed.backend", need)
        tr.note("distributed.backend", f"{need}: runner's {target} runs only under {need} "
                                       f"(Accelerate's ParallelismConfig); the source named no backend")
    tr.set(f"distributed.{target}", size)
    if ulysses:
        tr.note(key, f"distributed.sequence_parallel: {size}: DeepSpeed Ulysses, each row split over {size} "
                     f"GPUs with the attention heads spread over them (the heads must divide by {size})"
                + ("; the source's ring attention has no DeepSpeed counterpart in runner" if kind == RING else ""))
    else:
        tr.note(key, f"distributed.context_parallel: {size}: each row split over {size} GPUs, torch's ring "
                     "attention over SDPA under FSDP2"
                + ("; the source's Ulysses split has no FSDP counterpart in runner" if kind == ULYSSES else ""))
    for severity, path, message, _hint in check_parallelism(_filled(tr)):
        if severity != "error":
            continue
        if path == ("model", "attn_implementation"):
            old = tr.get("model.attn_implementation")
            tr.set("model.attn_implementation", "sdpa")
            tr.note("model.attn_implementation", f"sdpa instead of {old}: {message}")
        elif path == ("sequence", "packing"):
            tr.set("sequence.packing", False)
            tr.skip(packing_key, True, f"{message}; rows are padded to the batch's longest instead")


# Vision-language model families by what their hub names or LLaMA-Factory templates say; the model's
# own config.json (a local folder) is read first.
_NAMES = ((r"qwen3[-_.]?vl", "qwen3_vl"), (r"qwen2\.5[-_]?vl", "qwen2_5_vl"), (r"qwen2[-_]?vl", "qwen2_vl"),
          (r"llava[-_.]?(next|v1\.6)", "llava_next"), (r"llava", "llava"), (r"idefics3", "idefics3"),
          (r"smolvlm", "smolvlm"))
_TEMPLATES = {"qwen2_vl": "qwen2_vl", "qwen3_vl": "qwen3_vl", "qwen3_vl_nothink": "qwen3_vl", "llava": "llava",
              "llava_next": "llava_next"}


def vision_type(tr: Translation, template: str | None = None) -> str | None:
    """The runner vision family (its model_type) of the imported model; None for a text model or
    when the config does not tell."""
    from runner.data.vlm import FAMILIES

    path = str(tr.get("model.path") or "")
    found = locate(path, [tr.source.parent]) if path else None
    if found is not None and (found / "config.json").is_file():
        try:
            config = json.loads((found / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        kind = config.get("model_type")
        return kind if "vision_config" in config and kind in FAMILIES else None
    if template in _TEMPLATES:
        return _TEMPLATES[template]
    name = path.lower().rsplit("/", 1)[-1]
    return next((kind for pattern, kind in _NAMES if re.search(pattern, name)), None)


def vision_packing(tr: Translation, key: str, template: str | None, batch_note: str) -> None:
    """Packed rows of a vision-language model: Qwen-VL rows pack (micro_batch_size samples to a row,
    `batch_note` says how that differs from the source); the other families' packing is reported
    with runner's refusal, since their data would be refused at train time."""
    if not tr.get("sequence.packing"):
        return
    kind = vision_type(tr, template)
    if kind is None:
        return
    from runner.data.vlm import FAMILIES, packing_refusal

    refusal = packing_refusal(FAMILIES[kind])
    if refusal:
        tr.set("sequence.packing", False)
        tr.notes = [(k, text) for k, text in tr.notes if k != key]  # how it would have packed
        tr.skip(key, True, refusal)
    else:
        tr.note(key, f"{FAMILIES[kind].name} rows pack training.micro_batch_size samples to a row, each with its "
                     f"own 3-D positions; {batch_note}")


def take(keys: dict, names) -> dict:
    """The keys this module handles, removed from the source's keys (absent ones left out)."""
    return {name: keys.pop(name) for name in names if name in keys}


AXOLOTL_KEYS = ("context_parallel_size", "sequence_parallel_degree", "heads_k_stride", "ring_attn_func", "fp8",
                "fp8_enable_fsdp_float8_all_gather", "dp_shard_size", "dp_replicate_size", "tensor_parallel_size",
                "expert_parallel_size")
_AXOLOTL_RING = {"heads_k_stride": "ring-flash-attn's keys per ring step; runner does not use ring-flash-attn",
                 "ring_attn_func": "ring-flash-attn's variant; runner does not use ring-flash-attn (torch's ring "
                                   "attention under FSDP, Ulysses under DeepSpeed)"}
_AXOLOTL_MESH = {"dp_replicate_size": "no HSDP: runner does not replicate FSDP shard groups",
                 "tensor_parallel_size": "no tensor parallelism", "expert_parallel_size": "no expert parallelism"}


def axolotl(taken: dict, tr: Translation) -> None:
    """Axolotl's context_parallel_size (ring-flash-attn; sequence_parallel_degree is its deprecated
    name), the N-D mesh sizes and fp8 (torchao through Accelerate)."""
    key, size = "context_parallel_size", taken.get("context_parallel_size")
    old = taken.get("sequence_parallel_degree")
    if old is not None and size is None:
        key, size = "sequence_parallel_degree", old
        tr.note(key, "Axolotl's deprecated name of context_parallel_size")
    elif old is not None:
        tr.skip("sequence_parallel_degree", old, "context_parallel_size is also set and wins (this is its old name)")
    if size is not None:
        split_rows(tr, key, size, RING, "sample_packing")
    for name, reason in _AXOLOTL_RING.items():
        if name in taken:
            if taken[name] is None or size in (None, 1):
                tr.idle.append(name)
            else:
                tr.skip(name, taken[name], reason)
    if taken.get("dp_shard_size") is not None:
        tr.skip("dp_shard_size", taken["dp_shard_size"], "runner's FSDP shards over every process (processes / "
                                                         "context_parallel shard groups); no separate setting")
    for name, reason in _AXOLOTL_MESH.items():
        if name in taken:
            if taken[name] in (None, 1):
                tr.idle.append(name)
            else:
                tr.skip(name, taken[name], reason)
    if taken.get("fp8") is True:
        fp8(tr, "fp8", True)
    elif "fp8" in taken:
        tr.idle.append("fp8")
    if "fp8_enable_fsdp_float8_all_gather" in taken:
        fp8_all_gather(tr, "fp8_enable_fsdp_float8_all_gather", taken["fp8_enable_fsdp_float8_all_gather"] or False)
    vision_packing(tr, "sample_packing", None, "Axolotl does not pack multimodal rows")


LLAMAFACTORY_KEYS = ("fp8", "fp8_backend", "fp8_enable_fsdp_float8_all_gather", "sequence_parallel_size",
                     "sequence_parallel_mode")
_SP_MODES = {"zigzag-ring": RING, "llama3": RING, "ulysses": ULYSSES}


def llamafactory(taken: dict, tr: Translation, packing_key: str, template) -> None:
    """LLaMA-Factory's fp8 / fp8_backend / fp8_enable_fsdp_float8_all_gather (Accelerate's FP8) and
    360-LLaMA-Factory's sequence_parallel_size / sequence_parallel_mode (its fork with sequence
    parallelism: ring-flash-attn's zigzag or llama3 ring, or DeepSpeed Ulysses)."""
    size, mode = taken.get("sequence_parallel_size"), taken.get("sequence_parallel_mode")
    kind = RING
    if mode is not None:
        if size in (None, 1):
            tr.idle.append("sequence_parallel_mode")
        elif mode in _SP_MODES:
            kind = _SP_MODES[mode]
        else:
            tr.skip("sequence_parallel_mode", mode, f"modes: {', '.join(_SP_MODES)}; read as zigzag-ring")
    if size is not None:
        split_rows(tr, "sequence_parallel_size", size, kind, packing_key)
    on = taken.get("fp8") is True
    gather = taken.get("fp8_enable_fsdp_float8_all_gather")
    if gather is True and not on:
        tr.note("fp8_enable_fsdp_float8_all_gather", "LLaMA-Factory turns fp8 on for it")
        on = True
    if on:
        fp8(tr, "fp8", True)
    elif "fp8" in taken:
        tr.idle.append("fp8")
    if gather is not None:
        fp8_all_gather(tr, "fp8_enable_fsdp_float8_all_gather", gather)
    backend = taken.get("fp8_backend")
    if backend is not None:
        if not on:
            tr.idle.append("fp8_backend")
        elif tr.get("training.precision") != "fp8":
            tr.skip("fp8_backend", backend, "fp8 was not carried over (see fp8)")
        elif backend in ("auto", "torchao"):
            tr.note("fp8_backend", "runner picks its FP8 path: torchao's float8 layers for full fine-tuning, "
                                   "float8 matmuls on cached weights for LoRA")
        else:
            tr.skip("fp8_backend", backend, "runner's FP8 runs on torchao / torch._scaled_mm, not Transformer "
                                            "Engine or MS-AMP; training.precision: fp8 is kept")
    vision_packing(tr, packing_key, template, "LLaMA-Factory fills each packed row up to cutoff_len and counts "
                   "rows in per_device_train_batch_size: set training.micro_batch_size to the samples per row you want")
