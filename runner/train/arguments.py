"""The Trainer arguments every stage shares, assembled in one place from the Plan (what to train)
and the Runtime (how, on this machine). The stage turns them into its TrainingArguments or TRL
config (runner.train.stages). Nothing is decided here."""

from __future__ import annotations

from runner.plan.launch_settings import deepspeed_json
from runner.plan.parallelism import parallelism_settings
from runner.plan.plan import Plan, Runtime
from runner.train.optimizers import trainer_arguments


def common_arguments(plan: Plan, runtime: Runtime, *, output_dir: str, has_eval: bool) -> dict:
    t = plan.training
    evaluate = has_eval and bool(runtime.eval_steps)
    args = dict(
        output_dir=output_dir,
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps is not None else t.warmup_ratio,
        optim=t.optimizer,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_epsilon,
        max_grad_norm=t.max_grad_norm if t.max_grad_norm is not None else 0.0,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        seed=t.seed,
        data_seed=t.seed,
        bf16=runtime.precision in ("bf16", "fp8"),  # fp8: bf16 autocast around the FP8 matmuls
        fp16=runtime.precision == "fp16",
        **checkpointing_arguments(bool(t.gradient_checkpointing)),
        neftune_noise_alpha=t.neftune_noise_alpha,
        logging_strategy="steps",
        logging_steps=plan.tracking.log_every,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=runtime.eval_steps if evaluate else None,
        save_strategy="steps" if runtime.save_steps else "no",
        save_steps=runtime.save_steps or 500,
        save_total_limit=None,  # runner.train.trainer.checkpoint_callback rotates complete checkpoints only
        **best_model_arguments(plan, evaluate),
        report_to="none",  # runner.train.tracking logs to W&B itself: the run config holds the plan, no key is written
        disable_tqdm=True,  # runner.train.metrics draws the progress bar
        remove_unused_columns=False,
        logging_nan_inf_filter=False,  # RunnerMixin handles non-finite losses; the filter syncs every step
        dataloader_num_workers=0,
        dataloader_pin_memory=True,  # Trainer turns it off itself on a CPU
        **backend_arguments(plan, runtime),
    )
    if runtime.device == "cpu":
        args["use_cpu"] = True
    args.update(trainer_arguments(plan, runtime))
    if runtime.fast_path.non_blocking_copies:
        # Batches come from pinned host memory and reach the GPU without blocking the host.
        args["accelerator_config"] = {"non_blocking": True}
    return args


def best_model_arguments(plan: Plan, evaluate: bool) -> dict:
    """The Trainer's own best-metric tracking (state.best_metric, best_global_step,
    best_model_checkpoint) for early stopping and keep_best; with keep_best it also loads the best
    checkpoint's weights when training ends, and the final save writes those. Early stopping's
    patience counter lives in TrainerState's stateful_callbacks: restored on resume."""
    stopping, keep_best = plan.training.early_stopping, plan.output.keep_best
    if not evaluate or not (stopping or keep_best):
        return {}
    return dict(metric_for_best_model=stopping.metric if stopping else "eval_loss",
                greater_is_better=bool(stopping and stopping.mode == "max"),
                load_best_model_at_end=keep_best,
                restore_callback_states_from_checkpoint=True)


def checkpointing_arguments(on: bool) -> dict:
    """transformers 5.x renamed gradient_checkpointing to activation_checkpointing and warns on the
    old name; older 5.x releases know only the old one."""
    import dataclasses

    from transformers import TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    name = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    return {name: on, f"{name}_kwargs": {"use_reentrant": False} if on else None}


def backend_arguments(plan: Plan, runtime: Runtime) -> dict:
    """What carries out the Runtime's backend."""
    out: dict = {}
    if runtime.world_size > 1 and runtime.device == "cpu":
        out["ddp_backend"] = "gloo"  # with one process, a backend makes accelerate look for a group
    if runtime.backend != "single":
        out["ddp_find_unused_parameters"] = False
    if runtime.backend == "fsdp":
        f = plan.distributed.fsdp
        out["fsdp"] = True  # everything else through fsdp_config (the string form is deprecated)
        out["fsdp_config"] = {
            "version": 2,
            "reshard_after_forward": f.reshard_after_forward,
            "cpu_offload": f.cpu_offload,
            "state_dict_type": "FULL_STATE_DICT" if f.state_dict_type == "full" else "SHARDED_STATE_DICT",
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "activation_checkpointing": f.activation_checkpointing,
            "cpu_ram_efficient_loading": False,
            "transformer_layer_cls_to_wrap": [runtime.fsdp_wrap_class],
        }
    if runtime.backend == "deepspeed":
        conf = deepspeed_json({"distributed": plan.config["distributed"], "training": plan.config["training"]})
        out["deepspeed"] = conf.get("file") or conf
    parallelism = parallelism_config(plan, runtime)
    if parallelism is not None:
        out["parallelism_config"] = parallelism
    return out


def parallelism_config(plan: Plan, runtime: Runtime):
    """Accelerate's ParallelismConfig for rows split over processes (runner.plan.parallelism), or None."""
    values = parallelism_settings(plan.distributed, runtime.world_size, runtime.attn_implementation)
    if values is None:
        return None
    from accelerate.parallelism_config import ParallelismConfig
    from accelerate.utils import DeepSpeedSequenceParallelConfig, TorchContextParallelConfig

    if "cp_handler" in values:
        values["cp_handler"] = TorchContextParallelConfig(**values["cp_handler"])
    if "sp_handler" in values:
        values["sp_handler"] = DeepSpeedSequenceParallelConfig(**values["sp_handler"])
    return ParallelismConfig(**values)
