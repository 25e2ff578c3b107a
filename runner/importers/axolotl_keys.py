"""Axolotl's documented config keys, sorted by what becomes of them in a runner config (tables only;
runner/importers/axolotl.py applies them)."""

# Axolotl key -> runner key, for values that carry over as they are (numbers are coerced).
DIRECT = {
    "base_model": ("model.path", str), "revision_of_model": ("model.revision", str),
    "tokenizer_config": ("model.tokenizer", str), "trust_remote_code": ("model.trust_remote_code", bool),
    "lora_r": ("adapter.r", int), "lora_alpha": ("adapter.alpha", float), "lora_dropout": ("adapter.dropout", float),
    "lora_modules_to_save": ("adapter.modules_to_save", list), "peft_use_dora": ("adapter.dora", bool),
    "peft_use_rslora": ("adapter.rslora", bool), "loraplus_lr_ratio": ("adapter.loraplus_lr_ratio", float),
    "loraplus_lr_embedding": ("adapter.loraplus_lr_embedding", float),
    "val_set_size": ("val_size", float), "shuffle_merged_datasets": ("data.shuffle", bool),
    "dataset_prepared_path": ("data.cache_dir", str), "default_system_message": ("template.system_prompt", str),
    "sequence_len": ("sequence.max_length", int), "sample_packing": ("sequence.packing", bool),
    "num_epochs": ("training.epochs", float), "max_steps": ("training.max_steps", int),
    "micro_batch_size": ("training.micro_batch_size", int),
    "gradient_accumulation_steps": ("training.gradient_accumulation", int),
    "learning_rate": ("training.learning_rate", float), "warmup_steps": ("training.warmup_steps", int),
    "warmup_ratio": ("training.warmup_ratio", float), "weight_decay": ("training.weight_decay", float),
    "adam_beta1": ("training.adam_beta1", float), "adam_beta2": ("training.adam_beta2", float),
    "adam_epsilon": ("training.adam_epsilon", float), "max_grad_norm": ("training.max_grad_norm", float),
    "neftune_noise_alpha": ("training.neftune_noise_alpha", float), "seed": ("training.seed", int),
    "kto_desirable_weight": ("training.kto.desirable_weight", float),
    "kto_undesirable_weight": ("training.kto.undesirable_weight", float),
    "rpo_alpha": ("training.dpo.sft_weight", float), "dpo_label_smoothing": ("training.dpo.label_smoothing", float),
    "orpo_alpha": ("training.orpo.beta", float),
    "logging_steps": ("tracking.log_every", int), "save_total_limit": ("output.save_total_limit", int),
    "output_dir": ("output.dir", str), "random_init_weights": ("model.random_init", bool),
    "wandb_project": ("tracking.wandb.project", str),
    "wandb_entity": ("tracking.wandb.entity", str), "wandb_name": ("tracking.wandb.name", str),
    "use_tensorboard": ("tracking.tensorboard", bool), "mlflow_tracking_uri": ("tracking.mlflow.tracking_uri", str),
    "mlflow_experiment_name": ("tracking.mlflow.experiment", str), "mlflow_run_name": ("tracking.mlflow.run_name", str),
}

# Keys whose effect runner has without a setting (when set to the value Axolotl would use anyway).
IMPLIED = {
    "model_type": "runner picks the Auto class from the model's config (AutoModelForImageTextToText for a "
                  "vision-language model)", "tokenizer_type": "runner always loads AutoTokenizer",
    "processor_type": "runner loads the model's AutoProcessor for a vision-language model",
    "is_llama_derived_model": "runner reads the architecture from the model",
    "is_mistral_derived_model": "runner reads the architecture from the model",
    "is_falcon_derived_model": "runner reads the architecture from the model",
    "is_qwen_derived_model": "runner reads the architecture from the model",
    "strict": "runner takes dotted overrides on the command line", "local_rank": "set by the launcher",
    "low_cpu_mem_usage": "runner loads weights lazily", "save_safetensors": "runner always writes safetensors",
    "remove_unused_columns": "runner's data pipeline keeps only the columns it needs",
    "hf_use_auth_token": "runner uses HF_TOKEN from the environment (or model.token: ${env:HF_TOKEN})",
    "fsdp_version": "runner's FSDP backend is FSDP2",
}

# Keys runner has no counterpart for, with the reason a reader needs.
UNSUPPORTED = {
    "base_model_ignore_patterns": "runner loads the model directory as transformers does",
    "tokenizer_legacy": "no tokenizer legacy switch in runner", "resize_token_embeddings_to_32x": "no embedding padding option",
    "shrink_embeddings": "no embedding shrinking", "embeddings_skip_upcast": "no embedding upcast switch",
    "overrides_of_model_config": "no model config overrides", "overrides_of_model_kwargs": "no from_pretrained overrides",
    "gptq": "GPTQ models are not supported (bitsandbytes 4/8-bit only)", "qat": "no quantization-aware training",
    "quantization": "no post-training quantization (torchao)", "gpu_memory_limit": "no per-GPU memory cap",
    "lora_on_cpu": "no CPU placement of adapters", 
    "dataset_exact_deduplication": "no deduplication",
    "process_reward_model": "no process-reward-model training (stage rm scores whole sequences)",
    "dpo_use_weighting": "no weighted DPO", "eot_tokens": "runner finds end-of-turn tokens from the template",
    "push_dataset_to_hub": "no dataset upload", "dataset_processes": "runner picks preprocessing workers",
    "dataset_num_proc": "runner picks preprocessing workers",
    "dataset_keep_in_memory": "runner caches tokenized data on disk by data hash",
    "hub_model_id": "no upload to the Hub", "hub_strategy": "no upload to the Hub",
    "dataset_shard_num": "no dataset sharding", "dataset_shard_idx": "no dataset sharding",
    "pad_to_sequence_len": "runner pads each batch to its longest row (packed rows are full anyway)",
    "eval_sample_packing": "evaluation batches follow sequence.packing",
    "sample_packing_eff_est": "runner measures packing efficiency itself", "total_num_tokens": "runner counts tokens itself",
    "sample_packing_group_size": "packing heuristics are internal", "sample_packing_bin_size": "packing heuristics are internal",
    "sample_pack_sequentially": "packing order is internal", "pretraining_sample_concatenation": "packing is sequence.packing",
    "batch_flattening": "no batch flattening (use sequence.packing)", "device_map": "placement is by the distributed backend",
    "max_memory": "no per-device memory map", "lora_model_dir": "runner does not continue from another adapter",
    "peft_layers_to_transform": "no per-layer LoRA selection", "peft_layer_replication": "no LoRA layer replication",
    "lora_fan_in_fan_out": "PEFT's fan_in_fan_out is not exposed", "lora_mlp_kernel": "no custom LoRA kernels",
    "lora_qkv_kernel": "no custom LoRA kernels", "lora_o_kernel": "no custom LoRA kernels",
    "peft": "LoftQ initialisation is not supported", "relora_steps": "no ReLoRA", "relora_warmup_steps": "no ReLoRA",
    "relora_anneal_steps": "no ReLoRA", "relora_prune_ratio": "no ReLoRA", "relora_cpu_offload": "no ReLoRA",
    "wandb_watch": "no gradient watching", "wandb_run_id": "runner starts a new W&B run per training run",
    "wandb_log_model": "runner does not upload checkpoints to W&B",
    "hf_mlflow_log_artifacts": "runner logs no artifacts to MLflow (the run directory holds them)",
    "use_comet": "no Comet tracking", "comet_api_key": "no Comet tracking", "comet_workspace": "no Comet tracking",
    "comet_project_name": "no Comet tracking", "comet_experiment_key": "no Comet tracking", "comet_mode": "no Comet tracking",
    "comet_online": "no Comet tracking", "comet_experiment_config": "no Comet tracking",
    "torch_compile_backend": "runner compiles with torch.compile's default backend", "eval_batch_size": "evaluation uses training.micro_batch_size",
    "lr_quadratic_warmup": "no quadratic warmup", "evals_per_epoch": "give training.eval_every in steps",
    "saves_per_epoch": "give output.save_every in steps", "save_only_model": "checkpoints always hold optimizer state (for resume)",
    "include_tokens_per_second": "tokens/s is always in metrics.jsonl", "auto_find_batch_size": "no batch-size search",
    "eval_table_size": "no prediction tables", "eval_max_new_tokens": "no generation during eval",
    "do_causal_lm_eval": "no generation metrics during eval", "eval_causal_lm_metrics": "no generation metrics during eval",
    "profiler_steps": "no profiler switch", "loss_watchdog_threshold": "use training.max_nonfinite for divergence",
    "loss_watchdog_patience": "use training.max_nonfinite for divergence", "group_by_length": "no length grouping",
    "gradient_checkpointing_kwargs": "runner picks the checkpointing implementation",
    "early_stopping_patience": "no early stopping inside a run (a sweep can stop hopeless trials)",
    "lr_scheduler_kwargs": "no scheduler kwargs", "cosine_min_lr_ratio": "no minimum-lr ratio setting",
    "cosine_constant_lr_ratio": "no constant phase setting", "lr_div_factor": "no one-cycle scheduler",
    "optim_args": "no optimizer kwargs", "optim_target_modules": "no GaLore/APOLLO optimizers",
    "adam_beta3": "CAME optimizer not supported", "adam_epsilon2": "CAME optimizer not supported",
    "flash_optimum": "no BetterTransformer", "flash_attn_cross_entropy": "no fused kernels switch",
    "flash_attn_rms_norm": "no fused kernels switch", "flash_attn_fuse_qkv": "no fused kernels switch",
    "flash_attn_fuse_mlp": "no fused kernels switch", "s2_attention": "no shifted-sparse attention",
    "xformers_attention": "xformers is not supported; sdpa is the default kernel",
    "resume_from_checkpoint": "runner resumes from its own run directory (output.resume: auto)",
    "image_resize_algorithm": "runner scales images with bicubic resampling (vision.max_pixels)",
    "added_tokens_overrides": "no token-id overrides", "ddp_timeout": "no DDP timeout setting",
    "ddp_bucket_cap_mb": "no DDP bucket setting", "ddp_broadcast_buffers": "no DDP buffer setting",
    "ddp_find_unused_parameters": "no DDP unused-parameter setting", "torchdistx_path": "no anyprecision optimizer", "debug": "no debug mode",
    "unsloth_cross_entropy_loss": "no Unsloth kernels",
    "dataloader_num_workers": "runner picks data loader workers", "dataloader_pin_memory": "runner picks data loader settings",
    "dataloader_prefetch_factor": "runner picks data loader settings", "vllm": "no GRPO / vLLM generation",
    "trl": "only trl.beta carries over", "llm_int8_has_fp16_weight": "no int8 fp16-weight switch",
}
# Plugin and integration settings, by key prefix.
PREFIX_UNSUPPORTED = {"liger_": "no Liger kernels (a plugin setting)", "cut_cross_entropy": "no Cut Cross-Entropy (a plugin setting)",
                      "unsloth_": "no Unsloth kernels", "comet_": "no Comet tracking", "mlflow_": "not an MLflow setting runner takes",
                      "relora_": "no ReLoRA", "spectrum_": "no Spectrum (a plugin setting)", "kd_": "no distillation"}
SCHEDULERS = {"cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial",
              "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay"}
OPTIMIZERS = {"adamw_torch": "adamw_torch", "adamw_torch_fused": "adamw_torch_fused", "adamw_bnb_8bit": "adamw_8bit",
              "adamw_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
              "paged_adamw_32bit": "paged_adamw_32bit", "adafactor": "adafactor", "sgd": "sgd", "lion_8bit": "lion_8bit"}
RL_STAGES = {"dpo": ("dpo", None), "ipo": ("dpo", "ipo"), "kto": ("kto", None), "orpo": ("orpo", None),
             "grpo": ("grpo", None)}
RL_STAGES["simpo"] = ("simpo", None)  # TRL's CPO trainer with the simpo loss, as Axolotl runs it
# Preference stages: their datasets are read as preference pairs.
PREFERENCE_STAGES = ("dpo", "orpo", "simpo", "cpo", "rm")
PPO_REFUSED = ("runner does not train PPO: it needs a value model and a reward model in memory beside the policy "
               "and its own generation loop; GRPO takes its baseline from a group of sampled answers and needs no value model")
PPO_HINT = ("use training.stage: grpo (rewards from functions or a stage-rm run as `reward_model:`), or dpo / simpo on "
            "the preference pairs a PPO reward model would have been trained on")
LORA_INITS = {"gaussian", "pissa", "olora"}
QUANT_KEYS = {"bnb_4bit_quant_type": "quant_type", "bnb_4bit_use_double_quant": "double_quant",
              "bnb_4bit_compute_dtype": "compute_dtype", "bnb_4bit_quant_storage": "quant_storage"}
# Axolotl's own defaults (its hyperparameters schema) where runner's differ and change the run.
SOURCE_DEFAULTS = {"training.micro_batch_size": 1, "training.gradient_accumulation": 1,
                   "training.optimizer": "adamw_torch_fused"}
