"""What every stage's trainer shares (RunnerMixin, in front of transformers' Trainer or a TRL
trainer): the batches' token count, LoRA+ parameter groups through `create_optimizer` (it works
where Trainer refuses `optimizers=`, e.g. FSDP), a bound on steps with a non-finite loss, and the
chunked loss. Its settings come in one constructor argument, `runner=TrainerOptions(...)`; the
objects it shares with callbacks (the token tally, the non-finite guard) are made before both."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable

from runner.errors import UserError


@dataclass
class TokenTally:
    """Training tokens put through the model so far (padding excluded); the metrics callback reads it."""
    count: int = 0


@dataclass
class GuardSlot:
    """The device-side non-finite guard, once the optimizer exists (runner.train.nonfinite)."""
    guard: object = None


@dataclass
class TrainerOptions:
    row_tokens: Callable[[dict], int]      # the stage's token count of one pipeline row
    max_nonfinite: int = 0
    chunked_loss: bool = False
    param_groups: Callable | None = None   # model -> optimizer param groups (LoRA+), or None
    optimizer: Callable | None = None      # (model, lr) -> optimizer the Trainer cannot build (Muon), or None
    guard_any: bool = False                # guard optimizers without a fused found_inf step too
    activation_offloading: bool = False    # saved activations in pinned host memory (runner.train.fast.offload)
    tally: TokenTally = field(default_factory=TokenTally)
    guard: GuardSlot = field(default_factory=GuardSlot)


TOKENS_KEY = "runner_tokens"


class TokenCounter:
    """Wraps a collator and tags each batch with the tokens it puts through the model. The trainer
    pops the tag when the batch is consumed (dataloaders read ahead)."""

    def __init__(self, collator, row_tokens):
        self.collator = collator
        self.row_tokens = row_tokens

    def __call__(self, rows):
        batch = self.collator(rows)
        batch[TOKENS_KEY] = sum(self.row_tokens(r) for r in rows)
        return batch


class RunnerMixin:
    def __init__(self, *args, runner: TrainerOptions, **kwargs):
        self.runner = runner
        super().__init__(*args, **kwargs)
        # TRL trainers build their collator in __init__: every stage's batches are counted the same way.
        self.data_collator = TokenCounter(self.data_collator, runner.row_tokens)

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.runner.optimizer is not None:
            self.optimizer = self.runner.optimizer(self.model if model is None else model, self.args.learning_rate)
        elif self.optimizer is None and self.runner.param_groups is not None:
            opt_model = self.model if model is None else model
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            kwargs.pop("lr", None)  # each group carries its own rate
            self.optimizer = optimizer_cls(self.runner.param_groups(opt_model), lr=self.args.learning_rate, **kwargs)
        else:
            super().create_optimizer(model)
        self._attach_guard()
        return self.optimizer

    def _attach_guard(self):
        from runner.train import nonfinite

        # One process or DDP: every rank sees whole gradients (sharded backends see only their shard).
        replicated = not self.is_fsdp_enabled and not self.is_deepspeed_enabled
        # fp16's GradScaler skips overflowing steps by design: those must not count as failures.
        slot = self.runner.guard
        guarded = nonfinite.supports(self.optimizer) or (
            self.runner.guard_any and nonfinite.skips_without_gradient(self.optimizer))
        if slot.guard is None and replicated and not self.args.fp16 and guarded:
            slot.guard = nonfinite.NonFiniteGuard(self.optimizer, self.runner.max_nonfinite)

    _nonfinite_seen = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        from runner.train.fast.offload import maybe_offloading

        if isinstance(inputs, dict):  # GRPO's batches are lists of prompt rows; its stage counts tokens
            self.runner.tally.count += int(inputs.pop(TOKENS_KEY, 0))
        with maybe_offloading(self.runner.activation_offloading):  # forward and backward both inside
            loss = super().training_step(model, inputs, num_items_in_batch)
        if self.runner.guard.guard is not None:
            return self.runner.guard.guard.after_micro_step(loss)  # no host-device sync
        if not math.isfinite(float(loss.detach())):
            self._nonfinite_seen += 1
            step = self.state.global_step + 1
            if self._nonfinite_seen > self.runner.max_nonfinite:
                raise UserError(
                    f"non-finite loss at step {step} ({self._nonfinite_seen} so far; training.max_nonfinite "
                    f"is {self.runner.max_nonfinite})",
                    where="training",
                    hint="lower training.learning_rate, use precision bf16 rather than fp16, or raise max_nonfinite "
                    "to skip such steps",
                )
            print(f"warning: non-finite loss at step {step}: its gradients are dropped", file=sys.stderr)
            model.zero_grad(set_to_none=True)
            return loss.detach().new_zeros(())
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from runner.train.fast.mrope import with_packed_positions

        inputs = with_packed_positions(model, inputs)  # packed vision-language rows
        if self.runner.chunked_loss and not return_outputs:
            from runner.train.fast.chunked_loss import chunked_forward_loss

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


def checkpoint_failure(err: Exception, trainer) -> UserError | None:
    """The error to show when writing checkpoint-<step> failed (None: the failure was not while
    writing a checkpoint, or not a disk problem: the original error goes on). The partial
    checkpoint is removed either way: without its marker it is never resumed from."""
    import shutil
    from pathlib import Path

    from runner.rundir import complete_checkpoints, diskfull

    checkpoints = Path(trainer.args.output_dir)
    partial = checkpoints / f"checkpoint-{trainer.state.global_step}"
    if not partial.is_dir() or partial in complete_checkpoints(checkpoints.parent):
        return None
    done = complete_checkpoints(checkpoints.parent)
    if done:
        needed, how = diskfull.tree_bytes(done[-1]), f"the size of {done[-1].name}"
    else:
        needed = diskfull.saved_weights(trainer)[0] + diskfull.optimizer_bytes(trainer.optimizer)
        how = "its weights and optimizer state, besides smaller files"
    full = diskfull.is_disk_full(err, diskfull.free_bytes(partial), needed)
    shutil.rmtree(partial, ignore_errors=True)  # frees what it took
    if not full and not isinstance(err, OSError):
        return None
    last = f"the newest complete checkpoint is {done[-1].name}" if done else "there is no complete checkpoint yet"
    why = (diskfull.full_disk_message(checkpoints, needed, how, diskfull.free_bytes(checkpoints)) if full
           else (err.strerror or str(err)))
    return UserError(f"could not write {partial.name}: {why}; {last}",
                     where=getattr(err, "filename", None) or str(partial),
                     hint="free space under output.dir (or raise the quota), then run the same command to resume")


def checkpoint_callback(checkpoints: str, plan_hash: str | None, keep: int | None, keep_best: bool = False):
    """Marks each checkpoint complete once every rank has written its part (the marker is what makes
    a checkpoint resumable: runner.rundir), then keeps the newest `keep` and the best one the Trainer
    tracks (output.keep_best: its weights become the run's final weights)."""
    from transformers import TrainerCallback

    from runner import rundir

    class CompleteCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            _barrier()
            if args.should_save:
                rundir.finish_checkpoint(checkpoints, state.global_step, plan_hash)
                rundir.rotate_checkpoints(checkpoints, keep, best=state.best_model_checkpoint if keep_best else None)
            _barrier()

    return CompleteCheckpoints()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
