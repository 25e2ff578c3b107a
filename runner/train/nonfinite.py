"""Steps with a non-finite loss or gradient, caught without a host-device sync per step.

With torch's fused Adam/AdamW (the `adamw_torch_fused` optimizer) the optimizer itself can skip an
update on the device: it reads a `found_inf` flag, as under GradScaler. Before each step one fused
kernel per dtype checks every gradient for inf/NaN and sets the flag (the micro-steps' losses set it
too); the optimizer then leaves parameters, moments and step counts as they were. Counts stay on the
device and are read when the Trainer logs or saves anyway and at the end: a run with more than
training.max_nonfinite such steps stops there with the step named. Skipped updates never reach the
weights, so reading late loses nothing.

Under DDP every rank holds the same averaged gradients, but a loss is its own rank's: the flag is
all-reduced (max) across ranks before the step, on the device's stream, so every replica skips the
same steps and counts the same.

Optimizers without a `found_inf` step (GaLore, APOLLO, runner's Muon + AdamW) get the same check with
one sync per optimizer step: when the flag is set, the gradients are dropped before the step, and a
torch optimizer leaves a parameter without a gradient as it was (weights, moments, step counts).
Layerwise optimizers update during backward and cannot be guarded (refused with max_nonfinite > 0 at
plan time). Other optimizers and sharded runs (FSDP, DeepSpeed: each rank sees only its shard's
gradients) keep the plain check in runner.train.trainer.RunnerMixin (one sync per micro-step)."""

from __future__ import annotations

import sys

from runner.errors import UserError


def supports(optimizer) -> bool:
    """A torch optimizer whose fused step takes `found_inf`."""
    import torch

    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and bool(optimizer.defaults.get("fused")) \
        and getattr(optimizer, "_step_supports_amp_scaling", False)


def skips_without_gradient(optimizer) -> bool:
    """A torch optimizer stepping its parameters itself (not transformers' layerwise stand-in, whose
    updates ran during backward): one that leaves a parameter without a gradient unchanged."""
    import torch

    return isinstance(optimizer, torch.optim.Optimizer) and type(optimizer).__name__ != "LayerWiseDummyOptimizer"


class NonFiniteGuard:
    def __init__(self, optimizer, max_nonfinite: int):
        import torch

        device = next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))
        self.max_nonfinite = max_nonfinite
        self.found = torch.zeros((), dtype=torch.float32, device=device)  # this step: 1.0 when skipped
        self.one = torch.ones((), dtype=torch.float32, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)  # skipped steps so far
        self.steps = torch.zeros((), dtype=torch.int64, device=device)  # steps seen by the guard
        self.last = torch.zeros((), dtype=torch.int64, device=device)   # its step index of the last skip
        self.reported = 0
        self.optimizer = optimizer
        self.on_device = supports(optimizer)  # else: one sync per step, the gradients dropped when set
        self.handles = [optimizer.register_step_pre_hook(self._before_step),
                        optimizer.register_step_post_hook(self._after_step)]

    def after_micro_step(self, loss):
        """The micro-step's loss for the Trainer's running mean (0 when non-finite), flag set on device."""
        import torch

        loss = loss.detach()
        finite = torch.isfinite(loss)
        torch.maximum(self.found, (~finite).to(self.found.dtype), out=self.found)
        return torch.where(finite, loss, torch.zeros_like(loss))

    def _before_step(self, optimizer, args, kwargs):
        import torch

        groups: dict = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        for (_, dtype), grads in groups.items():
            if dtype in (torch.float32, torch.float16):
                torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found, self.one)
            else:
                # bf16 gradients (full fine-tuning of bf16 weights): CUDA's amp check has no bf16
                # kernel. A tensor's norm is non-finite exactly when one of its elements is.
                norms = torch.stack([n.float() for n in torch._foreach_norm(grads)])
                bad = (~torch.isfinite(norms).all()).to(self.found.dtype)
                torch.maximum(self.found, bad, out=self.found)
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            # A non-finite loss on one rank need not make the averaged gradients non-finite (inf loss,
            # finite gradient): without this, that rank alone would skip and the replicas would part.
            torch.distributed.all_reduce(self.found, op=torch.distributed.ReduceOp.MAX)
        if self.on_device:
            optimizer.found_inf = self.found
        elif self.found.item():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None

    def _after_step(self, optimizer, args, kwargs):
        import torch

        optimizer.__dict__.pop("found_inf", None)
        self.steps.add_(1)
        skipped = self.found > 0
        self.count.add_(skipped.to(self.count.dtype))
        torch.where(skipped, self.steps, self.last, out=self.last)
        self.found.zero_()

    def check(self, global_step: int) -> None:
        """Read the counts (one sync): warn about new skips; stop past training.max_nonfinite."""
        import torch

        count, steps, last = (int(x) for x in torch.stack([self.count, self.steps, self.last]).tolist())
        if count == self.reported:
            return
        at = global_step - steps + last
        new = count - self.reported
        self.reported = count
        if count > self.max_nonfinite:
            raise UserError(
                f"non-finite loss or gradients at step {at} ({count} so far; training.max_nonfinite is "
                f"{self.max_nonfinite})",
                where="training",
                hint="lower training.learning_rate, use precision bf16 rather than fp16, or raise max_nonfinite "
                "to skip such steps",
            )
        print(f"warning: {new} step(s) with a non-finite loss or gradients, the last at step {at}: their updates "
              "were skipped", file=sys.stderr)


def guard_callback(slot):
    """Checks the guard in `slot` (runner.train.trainer.GuardSlot, filled when the optimizer is made)
    where the Trainer syncs anyway: logging, saving, the end."""
    from transformers import TrainerCallback

    class NonFiniteCheck(TrainerCallback):
        def _check(self, state):
            if slot.guard is not None:
                slot.guard.check(state.global_step)

        def on_log(self, args, state, control, **kwargs):
            self._check(state)

        def on_save(self, args, state, control, **kwargs):
            self._check(state)

        def on_train_end(self, args, state, control, **kwargs):
            self._check(state)

    return NonFiniteCheck()
