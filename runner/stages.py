"""One trainer per stage, all fed the data pipeline's tokens unchanged.

sft / pt: transformers.Trainer with the pipeline's collator. TRL's SFTTrainer adds nothing we need
here (its value is dataset preparation, which the pipeline does) and patches the LM head; the plain
Trainer trains on exactly our input_ids / labels / position_ids with the model's own loss.
dpo / kto: TRL's trainers re-template and re-tokenize in `_prepare_dataset`; the subclasses below
replace that one method with a column rename of the pipeline's ids. orpo (trl.experimental) does
the same in `tokenize_row`. Verified against trl 1.16 (pyproject pins trl<2).

Every trainer also gets `RunnerMixin`: LoRA+ parameter groups through `create_optimizer` (works
where Trainer refuses `optimizers=`, e.g. FSDP), checkpoints staged under a temporary name and
renamed when complete, and a bound on steps with a non-finite loss."""
from __future__ import annotations

import math
import os
import sys

from runner import diskfull, rundir
from runner.metrics import TOKENS_KEY
from runner.errors import UserError

PREFERENCE_COLUMNS = {"prompt_input_ids": "prompt_ids", "chosen_input_ids": "chosen_ids", "rejected_input_ids": "rejected_ids"}
KTO_COLUMNS = {"prompt_input_ids": "prompt_ids", "completion_input_ids": "completion_ids"}


class RunnerMixin:
    """Behaviour shared by every stage's trainer; set the runner_* attributes after construction."""

    runner_param_groups = None  # callable(model) -> list of optimizer param groups, or None
    runner_max_nonfinite = 0
    runner_nonfinite_seen = 0
    runner_save_total_limit = None
    runner_plan_hash = None  # written into each checkpoint's completeness marker

    runner_guard = None  # runner.nonfinite.NonFiniteGuard when the optimizer can skip steps on the device

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.runner_param_groups is not None:
            opt_model = self.model if model is None else model
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            kwargs.pop("lr", None)  # each group carries its own rate
            self.optimizer = optimizer_cls(self.runner_param_groups(opt_model), lr=self.args.learning_rate, **kwargs)
        else:
            super().create_optimizer(model)
        self._attach_guard()
        return self.optimizer

    def _attach_guard(self):
        from runner import nonfinite

        # One process or DDP: every rank sees whole gradients (sharded backends see only their shard).
        replicated = not self.is_fsdp_enabled and not self.is_deepspeed_enabled
        # fp16's GradScaler skips overflowing steps by design: those must not count as failures.
        if self.runner_guard is None and replicated and not self.args.fp16 and nonfinite.supports(self.optimizer):
            self.runner_guard = nonfinite.NonFiniteGuard(self.optimizer, self.runner_max_nonfinite)

    runner_tokens = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.runner_tokens += int(inputs.pop(TOKENS_KEY, 0))
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.runner_guard is not None:
            return self.runner_guard.after_micro_step(loss)  # no host-device sync
        if not math.isfinite(float(loss.detach())):
            self.runner_nonfinite_seen += 1
            step = self.state.global_step + 1
            if self.runner_nonfinite_seen > self.runner_max_nonfinite:
                raise UserError(
                    f"non-finite loss at step {step} ({self.runner_nonfinite_seen} so far; training.max_nonfinite "
                    f"is {self.runner_max_nonfinite})",
                    where="training",
                    hint="lower training.learning_rate, use precision bf16 rather than fp16, or raise max_nonfinite "
                    "to skip such steps",
                )
            print(f"warning: non-finite loss at step {step}: its gradients are dropped", file=sys.stderr)
            model.zero_grad(set_to_none=True)
            return loss.detach().new_zeros(())
        return loss

    runner_chunked_loss = False  # fast path: loss without materialising the logits (runner.fastpath)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.runner_chunked_loss and not return_outputs:
            from runner.fastpath import chunked_forward_loss

            # As Trainer.compute_loss does with the model's own loss: the token count goes to the loss
            # only for models that take loss kwargs (else the Trainer divides by the accumulation
            # steps itself), and since it counts every process's tokens while DDP averages the
            # gradients over processes, the loss is scaled back up by their number.
            takes_count = self.model_accepts_loss_kwargs and num_items_in_batch is not None
            loss = chunked_forward_loss(model, inputs, num_items_in_batch if takes_count else None)
            if loss is not None:
                if takes_count and self.args.average_tokens_across_devices:
                    loss = loss * self.accelerator.num_processes
                return loss
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop(TOKENS_KEY, None)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def _get_output_dir(self, trial=None):
        # Checkpoints are written under a staging name and renamed once complete (see _save_checkpoint).
        if getattr(self, "_runner_staging", False):
            return os.path.join(self.args.output_dir, rundir.STAGING)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        self._runner_staging = True
        try:
            super()._save_checkpoint(model, trial)
        except diskfull.save_errors() as err:  # full disk, quota, permissions: earlier checkpoints stay as they are
            failure = _save_failed(err, self, self.state.global_step)
            if failure is None:
                raise
            raise failure from err
        finally:
            self._runner_staging = False
        # Every rank has written its part (shards, RNG state) before the checkpoint counts as complete.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged = os.path.join(self.args.output_dir, rundir.STAGING, f"checkpoint-{self.state.global_step}")
            rundir.finish_checkpoint(staged, self.args.output_dir, self.state.global_step, self.runner_plan_hash)
            rundir.rotate_checkpoints(self.args.output_dir, self.runner_save_total_limit)
        self.accelerator.wait_for_everyone()


def _save_failed(err: Exception, trainer, step: int) -> UserError | None:
    """The error to show for a checkpoint that could not be written (None: not a disk problem,
    the original error goes on). The staged copy is removed either way: it is never resumed from."""
    import shutil

    checkpoints = trainer.args.output_dir
    staged = os.path.join(checkpoints, rundir.STAGING, f"checkpoint-{step}")
    done = rundir.complete_checkpoints(os.path.dirname(checkpoints))
    if done:
        needed, how = diskfull.tree_bytes(done[-1]), f"the size of {done[-1].name}"
    else:
        needed = diskfull.saved_weights(trainer)[0] + diskfull.optimizer_bytes(trainer.optimizer)
        how = "its weights and optimizer state, besides smaller files"
    full = diskfull.is_disk_full(err, diskfull.free_bytes(staged), needed)
    shutil.rmtree(staged, ignore_errors=True)  # frees what it took
    if not full and not isinstance(err, OSError):
        return None
    last = f"the newest complete checkpoint is {done[-1].name}" if done else "there is no complete checkpoint yet"
    why = (diskfull.full_disk_message(checkpoints, needed, how, diskfull.free_bytes(checkpoints)) if full
           else (err.strerror or str(err)))
    return UserError(f"could not write checkpoint-{step}: {why}; {last}",
                     where=getattr(err, "filename", None) or staged,
                     hint="free space under output.dir (or raise the quota), then run the same command to resume")


def _renamed(dataset, columns: dict, keep=()):
    present = [c for c in dataset.column_names if c not in columns and c not in keep]
    dataset = dataset.remove_columns(present) if present else dataset
    return dataset.rename_columns({k: v for k, v in columns.items() if k in dataset.column_names})


def _trl():
    import trl

    return trl


def trainer_class(stage: str):
    """The trainer class for a stage, with RunnerMixin in front."""
    if stage in ("sft", "pt"):
        from transformers import Trainer

        return type("RunnerTrainer", (RunnerMixin, Trainer), {})
    if stage == "dpo":
        trl = _trl()

        class RunnerDPOTrainer(RunnerMixin, trl.DPOTrainer):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                # The pipeline's prompt / chosen / rejected ids, renamed to what DataCollatorForPreference reads.
                return _renamed(dataset, PREFERENCE_COLUMNS)

        return RunnerDPOTrainer
    if stage == "kto":
        trl = _trl()

        class RunnerKTOTrainer(RunnerMixin, trl.KTOTrainer):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                dataset = _renamed(dataset, KTO_COLUMNS, keep=("label",))
                if self.calculate_KL:
                    # KTO's KL estimate pairs each prompt with a neighbour's completion inside a batch
                    # (what trl's own preparation does after tokenizing).
                    def mismatch(batch):
                        ids = batch["completion_ids"]
                        return {"KL_completion_ids": [ids[-1]] + ids[:-1]}

                    dataset = dataset.map(mismatch, batched=True, batch_size=args.per_device_train_batch_size)
                return dataset

        return RunnerKTOTrainer
    if stage == "orpo":
        from trl.experimental.orpo import ORPOTrainer

        class RunnerORPOTrainer(RunnerMixin, ORPOTrainer):
            def tokenize_row(self, feature, model=None):
                # ORPO's concatenated forward wants prompt+answer sequences with -100 on the prompt.
                prompt = list(feature["prompt_input_ids"])
                out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
                for side in ("chosen", "rejected"):
                    answer = list(feature[f"{side}_input_ids"])
                    out[f"{side}_input_ids"] = prompt + answer
                    out[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
                    out[f"{side}_labels"] = [-100] * len(prompt) + answer
                return out

        return RunnerORPOTrainer
    raise UserError(f"unknown training stage {stage!r}", where="training.stage")


def training_arguments(plan, *, output_dir: str, precision: str, has_eval: bool, extra: dict | None = None):
    """TrainingArguments (or the stage's TRL config) that carry out plan.training."""
    t = plan.training
    stage = t["stage"]
    eval_every = t.get("eval_every")
    save_every = plan.output.get("save_every")
    warmup = t["warmup_steps"] if t.get("warmup_steps") is not None else float(t.get("warmup_ratio") or 0.0)
    kwargs = dict(
        output_dir=output_dir,
        per_device_train_batch_size=t["micro_batch_size"],
        per_device_eval_batch_size=t["micro_batch_size"],
        gradient_accumulation_steps=t["gradient_accumulation"],
        learning_rate=t["learning_rate"],
        lr_scheduler_type=t["lr_scheduler"],
        warmup_steps=warmup,
        optim=t["optimizer"],
        weight_decay=t["weight_decay"],
        adam_beta1=t["adam_beta1"],
        adam_beta2=t["adam_beta2"],
        adam_epsilon=t["adam_epsilon"],
        max_grad_norm=t["max_grad_norm"] if t.get("max_grad_norm") is not None else 0.0,
        num_train_epochs=t["epochs"],
        max_steps=t["max_steps"] if t.get("max_steps") else -1,
        seed=t["seed"],
        data_seed=t["seed"],
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        **_checkpointing_arguments(bool(t.get("gradient_checkpointing"))),
        neftune_noise_alpha=t.get("neftune_noise_alpha"),
        logging_strategy="steps",
        logging_steps=plan.tracking.get("log_every", 10),
        eval_strategy="steps" if has_eval and eval_every else "no",
        eval_steps=eval_every if has_eval and eval_every else None,
        save_strategy="steps" if save_every else "no",
        save_steps=save_every or 500,
        save_total_limit=None,  # RunnerMixin rotates complete checkpoints only
        report_to="none",  # tracking.py logs to W&B itself: the run config holds the plan, no key is written
        disable_tqdm=True,  # metrics.py draws the progress bar
        remove_unused_columns=False,
        logging_nan_inf_filter=False,  # RunnerMixin handles non-finite losses; the filter syncs every step
        dataloader_num_workers=0,
        dataloader_pin_memory=True,  # Trainer turns it off itself on a CPU
        label_names=["labels"] if stage in ("sft", "pt") else None,
        **(extra or {}),
    )
    if stage in ("sft", "pt"):
        from transformers import TrainingArguments

        return TrainingArguments(**kwargs)
    if stage == "dpo":
        dpo = t["dpo"]
        losses = [dpo["loss_type"]] + (["sft"] if dpo.get("sft_weight") else [])
        weights = [1.0, float(dpo["sft_weight"])] if dpo.get("sft_weight") else None
        # The pipeline truncated already: max_length None keeps the collator from cutting again.
        return _trl().DPOConfig(**kwargs, beta=dpo["beta"], loss_type=losses, loss_weights=weights,
                                label_smoothing=dpo.get("label_smoothing", 0.0), max_length=None)
    if stage == "kto":
        kto = t["kto"]
        if t["micro_batch_size"] < 2:
            raise UserError("KTO estimates its KL term inside a micro batch: micro_batch_size must be at least 2",
                            where="training.micro_batch_size")
        return _trl().KTOConfig(**kwargs, beta=kto["beta"], desirable_weight=kto["desirable_weight"],
                                undesirable_weight=kto["undesirable_weight"], max_length=None)
    if stage == "orpo":
        from trl.experimental.orpo import ORPOConfig

        # max_length only bounds ORPO's own tokenizer, which the pipeline replaces.
        return ORPOConfig(**kwargs, beta=t["orpo"]["beta"], max_length=plan.data["sequence"]["max_length"])
    raise UserError(f"unknown training stage {stage!r}", where="training.stage")


def _checkpointing_arguments(on: bool) -> dict:
    """transformers 5.x renamed gradient_checkpointing to activation_checkpointing and warns on the
    old name; older 5.x releases know only the old one."""
    import dataclasses

    from transformers import TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    name = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    return {name: on, f"{name}_kwargs": {"use_reentrant": False} if on else None}


def build_trainer(plan, *, model, tokenizer, data, args, collator, callbacks, ref_model=None):
    """The stage's trainer over the pipeline's datasets."""
    stage = plan.training["stage"]
    cls = trainer_class(stage)
    common = dict(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                  processing_class=tokenizer, callbacks=callbacks)
    if stage in ("sft", "pt"):
        trainer = cls(data_collator=collator, **common)
    elif stage in ("dpo", "kto"):
        trainer = cls(ref_model=ref_model, **common)
    else:
        trainer = cls(**common)
    trainer.runner_max_nonfinite = int(plan.training.get("max_nonfinite", 0))
    from runner.nonfinite import guard_callback

    check = guard_callback()
    check.trainer = trainer
    trainer.add_callback(check)
    trainer.runner_save_total_limit = plan.output.get("save_total_limit")
    trainer.runner_plan_hash = (plan.hashes or {}).get("plan")
    ratio = plan.adapter.get("loraplus_lr_ratio")
    if ratio and plan.adapter.get("kind") == "lora":
        from runner.adapters import loraplus_param_groups

        def groups(opt_model):
            return loraplus_param_groups(opt_model, lr=args.learning_rate, ratio=float(ratio),
                                         lr_embedding=float(plan.adapter.get("loraplus_lr_embedding", 1e-6)),
                                         weight_decay=args.weight_decay)

        trainer.runner_param_groups = groups
    return trainer
