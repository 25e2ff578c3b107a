"""Axolotl YAML -> runner config. Key names follow Axolotl's documented config reference
(docs/config.qmd, docs/rlhf.qmd, docs/multi-gpu.qmd). Every top-level key ends up mapped, implied by
runner's own behaviour (noted), or listed as not mapped with the reason."""

from __future__ import annotations

from pathlib import Path

from runner.errors import UserError
from runner.importers import axolotl_datasets as ds, scale
from runner.importers.axolotl_keys import (DIRECT, IMPLIED, LORA_INITS, OPTIMIZERS, PPO_HINT, PPO_REFUSED,
                                           PREFIX_UNSUPPORTED, QUANT_KEYS, RL_STAGES, SCHEDULERS, SOURCE_DEFAULTS,
                                           UNSUPPORTED)
from runner.importers.common import (Translation, as_number, pop_key as _pop, set_direct, drop_lora_keys, fsdp_qlora_storage, is_unset,
                                     split_list)
from runner.importers.distributed import deepspeed_from_file, fsdp_from_config


def translate(data: dict, source: Path, out_dir: Path) -> Translation:
    """The runner config for one Axolotl config (already parsed), paths written relative to out_dir."""
    tr = Translation("axolotl", source)
    keys = dict(data)
    taken = scale.take(keys, scale.AXOLOTL_KEYS)  # judged once the rest is translated
    _model_and_adapter(keys, tr)
    _stage(keys, tr)
    bases = [source.parent, Path.cwd()]
    ds.translate_all(keys, tr, bases, out_dir)
    _training(keys, tr)
    _distributed(keys, tr, bases, out_dir)
    _tracking(keys, tr)
    _vision(keys, tr)
    for key, value in keys.items():
        _simple(key, value, tr)
    scale.axolotl(taken, tr)
    _consistency(tr)
    for dotted, value in SOURCE_DEFAULTS.items():
        if tr.get(dotted) is None:
            tr.set(dotted, value)
            tr.note(dotted, f"Axolotl's default {value!r} written out (runner's default differs)")
    return tr


def _simple(key: str, value, tr: Translation) -> None:
    """The table-driven keys: direct copies, implied behaviour, known-unsupported, unknown."""
    known = key in DIRECT or key in IMPLIED or key in UNSUPPORTED
    if known and (is_unset(value) or (value is False and key not in DIRECT)):
        tr.idle.append(key)  # an empty or switched-off key asks for nothing
        return
    if key in DIRECT:
        set_direct(DIRECT, key, value, tr)
    elif key in IMPLIED:
        tr.note(key, IMPLIED[key])
    elif key in UNSUPPORTED:
        tr.skip(key, value, UNSUPPORTED[key])
    elif key.startswith(tuple(PREFIX_UNSUPPORTED)):
        tr.skip(key, value, next(r for p, r in PREFIX_UNSUPPORTED.items() if key.startswith(p)))
    else:
        tr.skip(key, value, "not a documented Axolotl key (misspelt?)")


def _vision(keys: dict, tr: Translation) -> None:
    """Axolotl's multimodal image_size (one side, or [height, width]) becomes a pixel budget:
    runner keeps each image's aspect ratio rather than squaring it."""
    size = keys.pop("image_size", None)
    if size is None:
        return
    sides = size if isinstance(size, list) else [size, size]
    try:
        pixels = int(sides[0]) * int(sides[-1])
    except (TypeError, ValueError):
        tr.skip("image_size", size, "an image side in pixels, or [height, width]")
        return
    tr.set("vision.max_pixels", pixels)
    tr.note("image_size", f"vision.max_pixels: {pixels}: images are scaled to that many pixels, aspect kept")


def _flag(keys: dict, name: str, tr: Translation) -> bool:
    """A switch: True when on; off or empty is recorded as idle."""
    value = _pop(keys, name, tr)
    if value is False or (isinstance(value, str) and value.lower() == "false"):
        tr.idle.append(name)
        return False
    return value is not None


def _model_and_adapter(keys: dict, tr: Translation) -> None:
    config = _pop(keys, "base_model_config", tr)
    if config is not None and config != keys.get("base_model"):
        tr.skip("base_model_config", config, "runner reads the model config from model.path")
    adapter = _pop(keys, "adapter", tr)
    if adapter in (None, "full"):
        tr.set("adapter.kind", "full")
    elif adapter in ("lora", "qlora"):
        tr.set("adapter.kind", "lora")
        if adapter == "qlora":
            tr.set("quantization.bits", 4)
    else:
        tr.set("adapter.kind", "full")
        tr.skip("adapter", adapter, "only lora, qlora and full fine-tuning are supported; imported as full")
    if _flag(keys, "load_in_4bit", tr):
        tr.set("quantization.bits", 4)
    if _flag(keys, "load_in_8bit", tr):
        if tr.get("quantization.bits") == 4:
            tr.skip("load_in_8bit", True, "load_in_4bit / qlora already set 4-bit")
        else:
            tr.set("quantization.bits", 8)
    bnb = _pop(keys, "bnb_config_kwargs", tr) or {}
    for name, value in bnb.items():
        if name in QUANT_KEYS and not is_unset(value):
            tr.set(f"quantization.{QUANT_KEYS[name]}", value)
        elif not (name == "llm_int8_has_fp16_weight" and value is False):
            tr.skip(f"bnb_config_kwargs.{name}", value, UNSUPPORTED.get(name, "no such bitsandbytes setting in runner"))
    targets = _pop(keys, "lora_target_modules", tr)
    linear = _flag(keys, "lora_target_linear", tr)
    if linear:
        tr.set("adapter.target_modules", "all-linear")
        if targets:
            tr.note("lora_target_modules", "lora_target_linear: true covers these modules (all-linear)")
    elif targets:
        tr.set("adapter.target_modules", split_list(targets))
    init = _pop(keys, "peft_init_lora_weights", tr)
    if init is not None and init is not True:
        text = str(init).lower()
        if text in LORA_INITS or text.startswith("pissa_niter_"):
            tr.set("adapter.init", text)
        else:
            tr.skip("peft_init_lora_weights", init, "runner supports default, gaussian, pissa, pissa_niter_N, olora")
    unfrozen = _pop(keys, "unfrozen_parameters", tr)
    if unfrozen:
        if tr.get("adapter.kind") == "full":
            tr.set("adapter.kind", "freeze")
            tr.set("adapter.trainable_modules", split_list(unfrozen))
            tr.note("unfrozen_parameters", "Axolotl matches parameter names (`...weight`), runner module names: "
                                           "check the patterns with `runner plan`")
        else:
            tr.skip("unfrozen_parameters", unfrozen, "only applies to full fine-tuning; the run uses LoRA")
    attention = [(k, v) for k, v in (("flash_attention", "flash_attention_2"), ("sdp_attention", "sdpa"),
                                      ("eager_attention", "eager"), ("flex_attention", "flex_attention"))
                 if _flag(keys, k, tr)]
    impl = _pop(keys, "attn_implementation", tr)
    if impl in ("sdpa", "eager", "flash_attention_2", "flex_attention"):
        attention.append(("attn_implementation", impl))
    elif impl is not None:
        tr.skip("attn_implementation", impl, "runner supports sdpa, eager, flash_attention_2, flex_attention")
    if attention:
        tr.set("model.attn_implementation", attention[0][1])
        for key, _ in attention[1:]:
            tr.skip(key, True, f"{attention[0][0]} already picks the attention kernel")
    for key, dtype in (("bfloat16", "bfloat16"), ("float16", "float16")):
        if _flag(keys, key, tr):
            tr.set("model.dtype", dtype)
            tr.note(key, "pure half-precision weights; runner still uses mixed precision per training.precision")
    special = _pop(keys, "special_tokens", tr) or {}
    for name, value in special.items():
        if name in ("pad_token", "eos_token", "bos_token") and not is_unset(value):
            tr.set(f"special_tokens.{name}", str(value))
        elif not is_unset(value):
            tr.skip(f"special_tokens.{name}", value, "runner overrides pad, eos and bos tokens only")
    tokens = _pop(keys, "tokens", tr)
    if tokens:
        tr.set("special_tokens.add", split_list(tokens))
        tr.note("tokens", "added as special tokens (runner adds no plain tokens)")


def _reward_model(keys: dict, rl, tr: Translation) -> bool:
    """Axolotl's `reward_model: true` (with model_type AutoModelForSequenceClassification and
    num_labels 1): stage rm. Returns whether it applies."""
    if not _flag(keys, "reward_model", tr):
        return False
    if rl is not None:
        tr.skip("reward_model", True, f"rl: {rl} is set too; imported as that stage")
        return False
    tr.set("training.stage", "rm")
    model_type = _pop(keys, "model_type", tr)
    if model_type not in (None, "AutoModelForSequenceClassification"):
        tr.skip("model_type", model_type, "stage rm loads the base as AutoModelForSequenceClassification")
    labels = _pop(keys, "num_labels", tr)
    if labels not in (None, 1):
        tr.skip("num_labels", labels, "runner's reward model has one label: a scalar score")
    tr.note("reward_model", "stage rm: a one-label sequence classifier trained on the preference pairs")
    return True


def _stage(keys: dict, tr: Translation) -> None:
    rl = _pop(keys, "rl", tr)
    if str(rl) == "ppo":
        raise UserError(PPO_REFUSED, where=f"{tr.source}: rl", hint=PPO_HINT)
    beta = _pop(keys, "rl_beta", tr)
    gamma, alpha = _pop(keys, "simpo_gamma", tr), _pop(keys, "cpo_alpha", tr)
    if _reward_model(keys, rl, tr):
        for key, value in (("rl_beta", beta), ("simpo_gamma", gamma), ("cpo_alpha", alpha)):
            if value is not None:
                tr.skip(key, value, "applies to an rl stage; this config trains a reward model")
        return
    if rl == "simpo":
        if gamma is not None:
            tr.set("training.simpo.gamma", as_number(gamma, "simpo_gamma", tr))
        if alpha not in (None, 0, 0.0):
            tr.skip("cpo_alpha", alpha, "runner's simpo has no behaviour-cloning term; stage cpo has one "
                                        "(training.cpo.alpha) with a sigmoid, hinge or ipo loss")
    else:
        for key, value in (("simpo_gamma", gamma), ("cpo_alpha", alpha)):
            if value is not None:
                tr.skip(key, value, "applies to rl: simpo only")
    trl = keys.get("trl") or {}
    if beta is None and not is_unset(trl.get("beta")):
        beta = trl["beta"]
        keys["trl"] = {k: v for k, v in trl.items() if k != "beta"}
    if rl is None:
        if beta is not None:
            tr.skip("rl_beta", beta, "no rl stage is set")
        return
    if str(rl) not in RL_STAGES:
        tr.skip("rl", rl, "runner trains sft, pt, dpo, kto, orpo, simpo, cpo and rm; imported as sft")
        return
    stage, loss = RL_STAGES[str(rl)]
    tr.set("training.stage", stage)
    if loss:
        tr.set("training.dpo.loss_type", loss)
    if stage == "grpo":
        from runner.importers.axolotl_grpo import grpo_keys

        grpo_keys(keys, tr)
    if beta is not None:
        value = as_number(beta, "rl_beta", tr)
        if value is not None:
            tr.set(f"training.{stage}.beta", value)


def _training(keys: dict, tr: Translation) -> None:
    if (value := _pop(keys, "bf16", tr)) is not None:
        if value == "auto":
            tr.set("training.precision", "auto")
        elif value in (True, "full", "true"):
            tr.set("training.precision", "bf16")
            if value == "full":
                tr.note("bf16", "'full' also evaluates in bf16; runner evaluates at training precision")
        else:
            tr.idle.append("bf16")
    if _flag(keys, "fp16", tr):
        if tr.get("training.precision") == "bf16":
            tr.skip("fp16", True, "bf16 is also set and wins")
        else:
            tr.set("training.precision", "fp16")
    if _flag(keys, "tf32", tr):
        tr.skip("tf32", True, "runner leaves TF32 matmuls to PyTorch's default")
    if (value := _pop(keys, "train_on_inputs", tr)) is not None:
        tr.set("template.train_on", "all" if value else "assistant")
    if (value := _pop(keys, "gradient_checkpointing", tr)) is not None:
        tr.set("training.gradient_checkpointing", bool(value))
        if isinstance(value, str):
            tr.note("gradient_checkpointing", f"{value!r} offloading is not supported; plain checkpointing is used")
    if (value := _pop(keys, "lr_scheduler", tr)) is not None:
        if value in SCHEDULERS:
            tr.set("training.lr_scheduler", value)
        else:
            tr.skip("lr_scheduler", value, f"runner schedulers: {', '.join(sorted(SCHEDULERS))}")
    for name in ("optimizer", "optim"):
        if (value := _pop(keys, name, tr)) is not None:
            if value in OPTIMIZERS:
                tr.set("training.optimizer", OPTIMIZERS[value])
            else:
                tr.skip(name, value, f"runner optimizers: {', '.join(sorted(set(OPTIMIZERS.values())))}")
    total = _pop(keys, "batch_size", tr)
    if total is not None:
        micro = keys.get("micro_batch_size")
        if isinstance(micro, int) and isinstance(total, int) and micro and total % micro == 0 \
                and "gradient_accumulation_steps" not in keys:
            keys["gradient_accumulation_steps"] = total // micro
            tr.note("batch_size", f"gradient_accumulation = batch_size / micro_batch_size = {total // micro}")
        else:
            tr.skip("batch_size", total, "give micro_batch_size and gradient_accumulation_steps instead")
    for key, target in (("eval_steps", "training.eval_every"), ("save_steps", "output.save_every")):
        if (value := _pop(keys, key, tr)) is not None:
            if isinstance(value, float) and value < 1:
                tr.skip(key, value, "a fraction of total steps; runner takes a whole number of steps")
            else:
                number = as_number(value, key, tr, integer=True)
                if number is not None:
                    tr.set(target, number)
    for key, runner_key in (("eval_strategy", "eval"), ("save_strategy", "save")):
        if (value := _pop(keys, key, tr)) is not None and value not in ("steps",):
            if value == "no" and runner_key == "eval":
                tr.note(key, "no evaluation: runner evaluates only when training.eval_every is set")
            else:
                tr.skip(key, value, f"runner {runner_key}s every N steps (training.eval_every / output.save_every)")
    if (value := _pop(keys, "torch_compile", tr)) is not None and value is not False:
        tr.set("training.torch_compile", True)
        if value == "auto":
            tr.note("torch_compile", "'auto' became true (runner compiles when asked)")
    _plugins(keys, tr)
    if (value := _pop(keys, "auto_resume_from_checkpoints", tr)) is not None:
        tr.set("output.resume", "auto" if value else "never")
    if _flag(keys, "curriculum_sampling", tr):
        tr.set("data.shuffle", False)
        tr.note("curriculum_sampling", "kept the dataset order (data.shuffle: false)")


def _plugins(keys: dict, tr: Translation) -> None:
    """Axolotl's kernel plugins and their switches -> runner's training.liger / training.chunked_loss."""
    plugins = split_list(_pop(keys, "plugins", tr) or [])
    liger = any("liger" in p.lower() for p in plugins)
    cce = any("cut_cross_entropy" in p.lower() for p in plugins)
    for plugin in plugins:
        if "liger" not in plugin.lower() and "cut_cross_entropy" not in plugin.lower():
            tr.skip("plugins", plugin, "runner has no plugin system")
    switches = {k: keys.pop(k) for k in list(keys) if k.startswith("liger_")}
    if liger and any(v is True for v in switches.values()):
        tr.set("training.liger", True)
        tr.note("liger_*", "runner applies Liger's kernels as a set (training.liger: true)")
    for key, value in switches.items():
        if value is not True:
            tr.idle.append(key)
        elif not liger:
            tr.skip(key, value, "the Liger plugin is not in plugins, so Axolotl ignores it too")
    unsloth = {k: keys.pop(k) for k in ("unsloth_lora_mlp", "unsloth_lora_qkv", "unsloth_lora_o") if k in keys}
    if any(v is True for v in unsloth.values()):
        tr.set("training.fused_lora", True)
        tr.note("unsloth_lora_*", "runner's fused LoRA layers play that role, for every LoRA projection "
                "(training.fused_lora: true)")
    tr.idle.extend(k for k, v in unsloth.items() if v is not True)
    if (value := _pop(keys, "cut_cross_entropy", tr)) is not None:
        if value is True and cce:
            tr.set("training.chunked_loss", True)
            tr.note("cut_cross_entropy", "runner's chunked cross-entropy plays the same role (no full fp32 logits)")
        elif value is True:
            tr.skip("cut_cross_entropy", value, "the Cut Cross-Entropy plugin is not in plugins")
        else:
            tr.idle.append("cut_cross_entropy")


def _distributed(keys: dict, tr: Translation, bases: list[Path], out_dir: Path) -> None:
    fsdp = _pop(keys, "fsdp", tr)
    fsdp_config = _pop(keys, "fsdp_config", tr)
    deepspeed = _pop(keys, "deepspeed", tr)
    if fsdp or fsdp_config:
        tr.set("distributed.backend", "fsdp")
        fsdp_from_config(split_list(fsdp) if fsdp else [], fsdp_config or {}, tr, "fsdp_config")
    if deepspeed:
        if fsdp or fsdp_config:
            tr.skip("deepspeed", deepspeed, "FSDP is also configured and wins")
        else:
            tr.set("distributed.backend", "deepspeed")
            deepspeed_from_file(str(deepspeed), tr, "deepspeed", bases, out_dir)


def _tracking(keys: dict, tr: Translation) -> None:
    mode = _pop(keys, "wandb_mode", tr)
    if mode is not None:
        if "wandb_project" in keys and not is_unset(keys["wandb_project"]):
            if mode in ("online", "offline", "disabled"):
                tr.set("tracking.wandb.mode", mode)
            else:
                tr.skip("wandb_mode", mode, "W&B modes: online, offline, disabled")
        else:
            tr.skip("wandb_mode", mode, "no wandb_project: W&B is off")
    for key in ("wandb_entity", "wandb_name"):
        if not is_unset(keys.get(key)) and is_unset(keys.get("wandb_project")):
            tr.skip(key, keys.pop(key), "no wandb_project: W&B is off")
    # Axolotl reports to MLflow when mlflow_tracking_uri is set.
    for key in ("mlflow_experiment_name", "mlflow_run_name"):
        if not is_unset(keys.get(key)) and is_unset(keys.get("mlflow_tracking_uri")):
            tr.skip(key, keys.pop(key), "no mlflow_tracking_uri: MLflow is off")


def _consistency(tr: Translation) -> None:
    """Settings Axolotl derives on its own that runner wants written down."""
    fsdp_qlora_storage(tr)
    drop_lora_keys(tr, {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout",
                        "target_modules": "lora_target_modules", "dora": "peft_use_dora", "rslora": "peft_use_rslora",
                        "init": "peft_init_lora_weights", "loraplus_lr_ratio": "loraplus_lr_ratio",
                        "loraplus_lr_embedding": "loraplus_lr_embedding", "modules_to_save": "lora_modules_to_save"})
