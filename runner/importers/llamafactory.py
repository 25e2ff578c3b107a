"""LLaMA-Factory YAML -> runner config. Key names follow LLaMA-Factory's argument dataclasses
(hparams/model_args.py, data_args.py, finetuning_args.py) and the transformers TrainingArguments its
examples use. Where LLaMA-Factory's default differs from runner's and changes the run, the default is
written out, so the imported run trains the way the original would have."""

from __future__ import annotations

from pathlib import Path

from runner.errors import UserError
from runner.importers import llamafactory_datasets as lfd, scale
from runner.importers.axolotl_keys import OPTIMIZERS, SCHEDULERS
from runner.importers.common import (Translation, as_number, pop_key as _pop, set_direct, drop_lora_keys, fsdp_qlora_storage, is_unset,
                                     split_list)
from runner.importers.distributed import deepspeed_from_file, fsdp_from_config
from runner.importers.trackers import llamafactory_swanlab

DIRECT = {
    "model_name_or_path": ("model.path", str), "trust_remote_code": ("model.trust_remote_code", bool),
    "lora_rank": ("adapter.r", int), "lora_alpha": ("adapter.alpha", float), "lora_dropout": ("adapter.dropout", float),
    "loraplus_lr_ratio": ("adapter.loraplus_lr_ratio", float),
    "loraplus_lr_embedding": ("adapter.loraplus_lr_embedding", float), "use_rslora": ("adapter.rslora", bool),
    "image_max_pixels": ("vision.max_pixels", int), "image_min_pixels": ("vision.min_pixels", int),
    "video_fps": ("vision.video_fps", float), "video_maxlen": ("vision.video_max_frames", int),
    "use_dora": ("adapter.dora", bool), "additional_target": ("adapter.modules_to_save", list),
    "quantization_type": ("quantization.quant_type", str), "double_quantization": ("quantization.double_quant", bool),
    "cutoff_len": ("sequence.max_length", int), "val_size": ("val_size", float),
    "per_device_train_batch_size": ("training.micro_batch_size", int),
    "gradient_accumulation_steps": ("training.gradient_accumulation", int),
    "learning_rate": ("training.learning_rate", float), "num_train_epochs": ("training.epochs", float),
    "warmup_ratio": ("training.warmup_ratio", float), "weight_decay": ("training.weight_decay", float),
    "adam_beta1": ("training.adam_beta1", float), "adam_beta2": ("training.adam_beta2", float),
    "adam_epsilon": ("training.adam_epsilon", float), "max_grad_norm": ("training.max_grad_norm", float),
    "seed": ("training.seed", int), "neftune_noise_alpha": ("training.neftune_noise_alpha", float),
    "pref_ftx": ("training.dpo.sft_weight", float), "dpo_label_smoothing": ("training.dpo.label_smoothing", float),
    "kto_chosen_weight": ("training.kto.desirable_weight", float),
    "kto_rejected_weight": ("training.kto.undesirable_weight", float),
    "logging_steps": ("tracking.log_every", int), "save_total_limit": ("output.save_total_limit", int),
    "output_dir": ("output.dir", str), "overwrite_output_dir": ("output.overwrite", bool),
    "gradient_checkpointing": ("training.gradient_checkpointing", bool),
    "enable_liger_kernel": ("training.liger", bool), "torch_compile": ("training.torch_compile", bool),
    "train_from_scratch": ("model.random_init", bool),
}
# LLaMA-Factory / TrainingArguments defaults that differ from runner's and change the run.
SOURCE_DEFAULTS = {
    "adapter.r": 8, "adapter.dropout": 0.0, "training.micro_batch_size": 8, "training.gradient_accumulation": 1,
    "training.learning_rate": 5e-5, "training.epochs": 3.0, "training.lr_scheduler": "linear",
    "training.warmup_ratio": 0.0, "tracking.log_every": 500, "output.save_every": 500,
}
IMPLIED = {
    "do_train": "runner trains", "plot_loss": "runner always writes loss.png",
    "overwrite_cache": "runner's cache is keyed by the data hash; changed data is re-tokenized",
    "low_cpu_mem_usage": "runner loads weights lazily", "save_safetensors": "runner always writes safetensors",
    "remove_unused_columns": "runner keeps only the columns it needs", "ignore_pad_token_for_loss": "pads never carry loss",
    "use_fast_tokenizer": "runner loads the fast tokenizer", "mix_strategy": "datasets are concatenated (concat)",
    "quantization_method": "bitsandbytes", "include_num_input_tokens_seen": "tokens are counted in metrics.jsonl",
    "pissa_convert": "runner converts a PiSSA adapter when merging", "tool_format": "tools render with the chat template",
    "logging_first_step": "runner logs from the first step",
}
UNSUPPORTED = {
    "adapter_name_or_path": "runner does not continue from another adapter", "adapter_folder": "runner does not continue from another adapter",
    "cache_dir": "the Hugging Face cache is set by HF_HOME", "resize_vocab": "runner resizes only for special_tokens.add",
    "split_special_tokens": "no slow-tokenizer switch", "new_special_tokens_config": "no token initialisation from descriptions",
    "init_special_tokens": "no token initialisation choice", "rope_scaling": "no RoPE scaling", "shift_attn": "no shifted-sparse attention",
    "mixture_of_depths": "no mixture-of-depths", "use_unsloth": "no Unsloth", "use_unsloth_gc": "no Unsloth",
"moe_aux_loss_coef": "no MoE router loss setting",
    "use_reentrant_gc": "runner picks the checkpointing implementation", "upcast_layernorm": "no layernorm upcast",
    "upcast_lmhead_output": "no lm_head upcast",
    "infer_backend": "inference setting", "offload_folder": "no weight offload folder", "use_kv_cache": "inference setting",
    "infer_dtype": "inference setting", "ms_hub_token": "ModelScope is not supported", "om_hub_token": "Modelers is not supported",
    "print_param_status": "runner prints trainable/total parameters", "quantization_device_map": "no quantized device map",
    "use_hyper_parallel": "no HyperParallel backend (runner: ddp, fsdp, deepspeed)",
    "hyper_parallel_args": "no HyperParallel backend", "hyper_parallel_cp_size": "no HyperParallel backend",
    "video_max_pixels": "video frames follow vision.max_pixels", "video_min_pixels": "video frames follow vision.min_pixels",
    "media_dir": "runner reads media paths relative to the data file",
    "export_dir": "use `runner merge`", "export_size": "use `runner merge`", "export_device": "use `runner merge`",
    "export_quantization_bit": "no export quantization", "export_quantization_dataset": "no export quantization",
    "export_legacy_format": "use `runner merge`", "export_hub_model_id": "no upload to the Hub",
    "streaming": "no dataset streaming", "buffer_size": "no dataset streaming", "interleave_probs": "no interleaved mixing (use datasets[].weight)",
    "preprocessing_batch_size": "runner picks preprocessing batches", "preprocessing_num_workers": "runner picks preprocessing workers",
    "eval_num_beams": "no generation during eval", "eval_on_each_dataset": "one validation loss over all eval data",
    "tokenized_path": "runner caches tokenized data by data hash",
    "pref_bco_weight": "no BCO term", "ref_model": "the reference model is the base model",
    "ref_model_adapters": "the reference model is the base model", "ref_model_quantization_bit": "the reference model is the base model",
    "reward_model": "no PPO / reward models", "reward_model_adapters": "no PPO / reward models",
    "reward_model_quantization_bit": "no PPO / reward models", "reward_model_type": "no PPO / reward models",
    "ppo_buffer_size": "no PPO", "ppo_epochs": "no PPO", "ppo_score_norm": "no PPO", "ppo_target": "no PPO",
    "ppo_whiten_rewards": "no PPO", "ld_alpha": "no LD-DPO", "create_new_adapter": "runner does not continue from another adapter",
    "use_galore": "no GaLore", "use_apollo": "no APOLLO", "use_badam": "no BAdam", "use_llama_pro": "no LLaMA Pro",
    "use_adam_mini": "no Adam-mini", "use_muon": "no Muon", "use_dft_loss": "no DFT loss", "use_mca": "no Megatron",
    "compute_accuracy": "no token accuracy metric", "early_stopping_steps": "no early stopping inside a run",
    "include_effective_tokens_per_second": "tokens/s is always in metrics.jsonl", "freeze_extra_modules": "freeze trains decoder layers or named modules",
    "ddp_timeout": "no DDP timeout setting", "ddp_find_unused_parameters": "no DDP unused-parameter setting",
    "per_device_eval_batch_size": "evaluation uses training.micro_batch_size", "do_eval": "runner evaluates when training.eval_every is set",
    "do_predict": "no prediction", "predict_with_generate": "no generation during eval", "dataloader_num_workers": "runner picks data loader workers",
    "push_to_hub": "no upload to the Hub", "hub_model_id": "no upload to the Hub", "load_best_model_at_end": "the final model is the last step's",
    "metric_for_best_model": "the final model is the last step's", "lr_scheduler_kwargs": "no scheduler kwargs",
    "save_only_model": "checkpoints always hold optimizer state (for resume)", "resume_from_checkpoint": "runner resumes from its own run directory (output.resume: auto)",
    "logging_dir": "logs go to the run directory", "tf32": "runner leaves TF32 matmuls to PyTorch's default",
    "group_by_length": "no length grouping", "label_smoothing_factor": "no label smoothing for SFT",
    "max_new_tokens": "inference setting", "do_sample": "inference setting", "temperature": "inference setting",
    "top_p": "inference setting", "top_k": "inference setting", "num_beams": "inference setting",
    "repetition_penalty": "inference setting", "length_penalty": "inference setting", "default_system": None,
    "enable_thinking": None, "freeze_language_model": "the language model always trains (LoRA or full)",
    "pissa_iter": None,
    "hf_hub_token": None, "save_strategy": None, "eval_strategy": None, "evaluation_strategy": None,
}
TEMPLATES = {"llama3": "llama3", "llama2": "llama2", "mistral": "mistral", "gemma": "gemma", "gemma2": "gemma",
             "qwen": "qwen2.5", "qwen3": "qwen3", "qwen3_nothink": "qwen3", "phi": "phi3", "chatml": "chatml",
             "deepseek3": "deepseek", "deepseekr1": "deepseek", "vicuna": "vicuna", "alpaca": "alpaca"}


def translate(data: dict, source: Path, out_dir: Path, dataset_info=None) -> Translation:
    tr = Translation("llamafactory", source)
    keys = dict(data)
    bases = [source.parent, Path.cwd()]
    taken = scale.take(keys, scale.LLAMAFACTORY_KEYS)  # judged once the rest is translated
    packing_key, template = "neat_packing" if keys.get("neat_packing") else "packing", keys.get("template")
    _stage_and_adapter(keys, tr)
    _template(keys, tr)
    _datasets(keys, tr, bases, out_dir, dataset_info)
    _training(keys, tr, bases, out_dir)
    _vision_parts(keys, tr)
    for key, value in keys.items():
        _simple(key, value, tr)
    scale.llamafactory(taken, tr, packing_key, template)
    fsdp_qlora_storage(tr)
    drop_lora_keys(tr, {"r": "lora_rank", "alpha": "lora_alpha", "dropout": "lora_dropout", "dora": "use_dora",
                        "rslora": "use_rslora", "init": "pissa_init", "loraplus_lr_ratio": "loraplus_lr_ratio",
                        "loraplus_lr_embedding": "loraplus_lr_embedding", "modules_to_save": "additional_target"})
    for dotted, value in SOURCE_DEFAULTS.items():
        if tr.get(dotted) is None and _applies(dotted, tr):
            tr.set(dotted, value)
            tr.note(dotted, f"LLaMA-Factory's default {value!r} written out (runner's default differs)")
    return tr


def _applies(dotted: str, tr: Translation) -> bool:
    if dotted.startswith("adapter."):
        return tr.get("adapter.kind") == "lora"
    if dotted == "training.warmup_ratio":
        return tr.get("training.warmup_steps") is None
    if dotted == "training.epochs":
        return tr.get("training.max_steps") is None
    return True


def _simple(key: str, value, tr: Translation) -> None:
    if is_unset(value):
        tr.idle.append(key)
    elif key in DIRECT:
        set_direct(DIRECT, key, value, tr)
    elif key in IMPLIED:
        tr.note(key, IMPLIED[key])
    elif value is False and key in UNSUPPORTED:
        tr.idle.append(key)
    elif key in UNSUPPORTED and UNSUPPORTED[key]:
        tr.skip(key, value, UNSUPPORTED[key])
    else:
        tr.skip(key, value, "not a documented LLaMA-Factory argument (misspelt?)")


def _vision_parts(keys: dict, tr: Translation) -> None:
    """freeze_vision_tower / freeze_multi_modal_projector (both true by default there): an unfrozen
    tower trains with the adapter (LoRA'd under LoRA, whole otherwise), an unfrozen projector whole."""
    lora = tr.get("adapter.kind") == "lora"
    if keys.pop("freeze_vision_tower", True) is False:
        tr.set("vision.tower", "lora" if lora else "full")
    if keys.pop("freeze_multi_modal_projector", True) is False:
        tr.set("vision.projector", "full")


def _stage_and_adapter(keys: dict, tr: Translation) -> None:
    stage = _pop(keys, "stage", tr) or "sft"
    loss = _pop(keys, "pref_loss", tr)
    if stage == "ppo":
        from runner.importers.axolotl_keys import PPO_HINT, PPO_REFUSED

        raise UserError(PPO_REFUSED, where=f"{tr.source}: stage", hint=PPO_HINT)
    if stage in ("sft", "pt", "dpo", "kto", "rm"):
        tr.set("training.stage", stage)
    else:
        tr.set("training.stage", "sft")
        tr.skip("stage", stage, "runner trains sft, pt, dpo, kto, orpo, simpo, cpo and rm; imported as sft")
    if loss is not None and stage == "dpo":
        if loss in ("orpo", "simpo"):
            tr.set("training.stage", loss)
        elif loss in ("sigmoid", "hinge", "ipo"):
            tr.set("training.dpo.loss_type", loss)
        else:
            tr.skip("pref_loss", loss, "runner's DPO losses: sigmoid, hinge, ipo (orpo and simpo are stages of their own)")
    beta = _pop(keys, "pref_beta", tr)
    final = tr.get("training.stage")
    gamma = _pop(keys, "simpo_gamma", tr)
    if gamma is not None:
        if final == "simpo":
            tr.set("training.simpo.gamma", as_number(gamma, "simpo_gamma", tr))
        else:
            tr.idle.append("simpo_gamma")
    if beta is not None:
        if final in ("dpo", "kto", "orpo", "simpo"):
            tr.set(f"training.{final}.beta", as_number(beta, "pref_beta", tr))
        else:
            tr.idle.append("pref_beta")
    kind = keys.pop("finetuning_type", "lora") or "lora"
    if kind in ("lora", "full", "freeze"):
        tr.set("adapter.kind", kind)
    else:
        tr.set("adapter.kind", "full")
        tr.skip("finetuning_type", kind, "runner trains lora, full and freeze; imported as full")
    target = _pop(keys, "lora_target", tr)
    if kind == "lora":
        names = split_list(target) if target is not None else ["all"]
        tr.set("adapter.target_modules", "all-linear" if names == ["all"] else names)
    elif target is not None:
        tr.skip("lora_target", target, f"a LoRA setting, but the run is {kind} fine-tuning")
    steps = keys.pop("pissa_iter", 16)
    if _pop(keys, "pissa_init", tr):
        tr.set("adapter.init", "pissa" if steps in (-1, None) else f"pissa_niter_{int(steps)}")
    if kind == "freeze":
        layers = keys.pop("freeze_trainable_layers", 2)
        modules = split_list(keys.pop("freeze_trainable_modules", "all"))
        if isinstance(layers, int) and layers > 0:
            tr.set("adapter.trainable_layers", layers)
        else:
            tr.skip("freeze_trainable_layers", layers, "runner trains the last N layers (N > 0)")
        if modules != ["all"]:
            tr.set("adapter.trainable_modules", modules)
    else:
        for key in ("freeze_trainable_layers", "freeze_trainable_modules"):
            if key in keys:
                tr.skip(key, keys.pop(key), f"only for finetuning_type: freeze (this run is {kind})")
    bits = _pop(keys, "quantization_bit", tr)
    if bits is not None:
        if bits in (4, 8):
            tr.set("quantization.bits", bits)
        else:
            tr.skip("quantization_bit", bits, "bitsandbytes 4 or 8 bits")
    if _pop(keys, "hf_hub_token", tr) is not None:
        tr.note("hf_hub_token", "the token is not copied: export HF_TOKEN (or set model.token: ${env:HF_TOKEN})")
    revision = _pop(keys, "model_revision", tr)
    if revision not in (None, "main"):
        tr.set("model.revision", str(revision))
    attn = _pop(keys, "flash_attn", tr)
    kernels = {"fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager", "auto": None}
    if attn is not None:
        if attn in kernels:
            if kernels[attn]:
                tr.set("model.attn_implementation", kernels[attn])
        else:
            tr.skip("flash_attn", attn, "runner kernels: fa2, sdpa, disabled (eager)")
    if _pop(keys, "pure_bf16", tr):
        tr.set("model.dtype", "bfloat16")
    for key in ("add_special_tokens", "add_tokens"):
        if (tokens := _pop(keys, key, tr)) is not None:
            tr.set("special_tokens.add", tr.get("special_tokens.add", []) + split_list(tokens))
            if key == "add_tokens":
                tr.note(key, "added as special tokens (runner adds no plain tokens)")


def _template(keys: dict, tr: Translation) -> None:
    name = _pop(keys, "template", tr)
    if name is not None:
        if name in TEMPLATES:
            tr.set("template.name", TEMPLATES[name])
            if name == "qwen3_nothink":
                tr.set("template.enable_thinking", False)
        elif name == "empty" and tr.get("training.stage") == "pt":
            tr.note("template", "pre-training on plain text needs no template")
        else:
            tr.skip("template", name, "no runner template of that name; the tokenizer's own template is used")
    if (system := _pop(keys, "default_system", tr)) is not None:
        tr.set("template.system_prompt", str(system))
    if (thinking := _pop(keys, "enable_thinking", tr)) is not None:
        tr.set("template.enable_thinking", bool(thinking))
    if (value := _pop(keys, "train_on_prompt", tr)) is not None:
        tr.set("template.train_on", "all" if value else "assistant")
    if _pop(keys, "mask_history", tr):
        tr.set("template.train_on", "last_assistant")


def _datasets(keys: dict, tr: Translation, bases: list[Path], out_dir: Path, explicit_info) -> None:
    dataset_dir = str(_pop(keys, "dataset_dir", tr) or "data")
    max_samples = _pop(keys, "max_samples", tr)
    info_path = lfd.find_dataset_info(explicit_info, dataset_dir, bases) if dataset_dir != "ONLINE" else None
    info = lfd.load_dataset_info(info_path) if info_path else None
    stage = tr.get("training.stage")
    for key, target in (("dataset", "datasets"), ("eval_dataset", "eval_datasets")):
        names = _pop(keys, key, tr)
        if names is not None:
            found = lfd.translate_names(key, names, info, info_path, dataset_dir, stage, tr, bases, out_dir,
                                        max_samples)
            if found:
                tr.config[target] = found
    if max_samples is not None:
        tr.note("max_samples", "became max_samples per dataset: the first N rows, never repeated")
    if _pop(keys, "streaming", tr):
        tr.set("data.streaming", True)
    packing = _pop(keys, "packing", tr)
    neat = _pop(keys, "neat_packing", tr)
    if neat or packing or (packing is None and stage == "pt"):
        tr.set("sequence.packing", True)
        if packing and not neat:
            tr.note("packing", "runner's packing never attends across samples (LLaMA-Factory's neat_packing)")
        elif packing is None and not neat:
            tr.note("packing", "LLaMA-Factory packs pre-training data by default")
    if stage == "pt" and tr.get("sequence.truncation") is None:
        # LLaMA-Factory's pre-training preprocessing joins the texts and cuts blocks of cutoff_len:
        # no text is dropped. runner keeps documents apart and splits the long ones.
        tr.set("sequence.truncation", "split")
        tr.note("stage", "pre-training text: long documents are split into pieces (sequence.truncation: split)")
    if _pop(keys, "disable_shuffling", tr):
        tr.set("data.shuffle", False)


def _training(keys: dict, tr: Translation, bases: list[Path], out_dir: Path) -> None:
    bf16, fp16 = _pop(keys, "bf16", tr), _pop(keys, "fp16", tr)
    if bf16:
        tr.set("training.precision", "bf16")
    elif fp16:
        tr.set("training.precision", "fp16")
    else:
        tr.set("training.precision", "fp32")
        tr.note("training.precision", "neither bf16 nor fp16 is set: LLaMA-Factory trains in fp32")
    if bf16 and fp16:
        tr.skip("fp16", fp16, "bf16 is also set and wins")
    if _pop(keys, "disable_gradient_checkpointing", tr):
        tr.set("training.gradient_checkpointing", False)
    elif "gradient_checkpointing" not in keys:
        tr.set("training.gradient_checkpointing", True)
        tr.note("training.gradient_checkpointing", "LLaMA-Factory checkpoints activations unless disabled")
    if (value := _pop(keys, "lr_scheduler_type", tr)) is not None:
        if value in SCHEDULERS:
            tr.set("training.lr_scheduler", value)
        else:
            tr.skip("lr_scheduler_type", value, f"runner schedulers: {', '.join(sorted(SCHEDULERS))}")
    if (value := _pop(keys, "optim", tr)) is not None:
        if value in OPTIMIZERS:
            tr.set("training.optimizer", OPTIMIZERS[value])
        else:
            tr.skip("optim", value, f"runner optimizers: {', '.join(sorted(set(OPTIMIZERS.values())))}")
    for key, target in (("max_steps", "training.max_steps"), ("warmup_steps", "training.warmup_steps"),
                        ("eval_steps", "training.eval_every"), ("save_steps", "output.save_every")):
        if (value := _pop(keys, key, tr)) is not None:
            if isinstance(value, float) and value < 1:
                tr.skip(key, value, "a fraction of total steps; runner takes a whole number of steps")
            elif (number := as_number(value, key, tr, integer=True)) is not None and number > 0:
                tr.set(target, number)
            elif number is not None:
                tr.idle.append(key)
    for key in ("eval_strategy", "evaluation_strategy", "save_strategy"):
        if (value := _pop(keys, key, tr)) is not None and value != "steps":
            if value == "no":
                tr.idle.append(key)
            else:
                tr.skip(key, value, "runner evaluates and saves every N steps (training.eval_every / output.save_every)")
    report = split_list(_pop(keys, "report_to", tr) or [])
    for target in report:
        if target == "wandb":
            tr.set("tracking.wandb.project", "huggingface")
            tr.note("report_to", "W&B project 'huggingface' (transformers' default; WANDB_PROJECT overrides it)")
        elif target == "tensorboard":
            tr.set("tracking.tensorboard", True)
        elif target == "mlflow":
            tr.set("tracking.mlflow", {})
            tr.note("report_to", "MLflow at MLFLOW_TRACKING_URI, else the run directory's own mlflow.db")
        elif target == "swanlab":
            keys.setdefault("use_swanlab", True)
        elif target != "none":
            tr.skip("report_to", target, "runner tracks with W&B, TensorBoard, MLflow and SwanLab (and metrics.jsonl)")
    llamafactory_swanlab(keys, tr)
    if (name := _pop(keys, "run_name", tr)) is not None:
        if "wandb" in report:
            tr.set("tracking.wandb.name", str(name))
        else:
            tr.skip("run_name", name, "only used by W&B, which is off")
    if _pop(keys, "disable_tqdm", tr):
        tr.set("tracking.progress_bar", False)
    fsdp, fsdp_config = _pop(keys, "fsdp", tr), _pop(keys, "fsdp_config", tr)
    deepspeed, wrap = _pop(keys, "deepspeed", tr), _pop(keys, "fsdp_transformer_layer_cls_to_wrap", tr)
    if fsdp or fsdp_config:
        tr.set("distributed.backend", "fsdp")
        if isinstance(fsdp_config, str):
            tr.skip("fsdp_config", fsdp_config, "give FSDP settings inline; runner does not read an FSDP JSON file")
            fsdp_config = {}
        fsdp_from_config(split_list(fsdp) if fsdp else [], fsdp_config or {}, tr, "fsdp_config")
    if wrap is not None and fsdp:  # TrainingArguments' older top-level spelling of fsdp_config's key
        fsdp_from_config([], {"fsdp_transformer_layer_cls_to_wrap": wrap}, tr, "")
    elif wrap is not None:
        tr.skip("fsdp_transformer_layer_cls_to_wrap", wrap, "no fsdp: the run is not sharded")
    if deepspeed:
        tr.set("distributed.backend", "deepspeed")
        deepspeed_from_file(str(deepspeed), tr, "deepspeed", bases, out_dir)

