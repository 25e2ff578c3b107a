"""SIGTERM / SIGINT during training: finish the current optimizer step, write a checkpoint, exit
with EXIT_INTERRUPTED (75, EX_TEMPFAIL: "interrupted, resumable"). A second signal exits at once
(KeyboardInterrupt: exit 130, nothing more written). Under several processes the ranks agree on
the stop at each step end (all-reduce of the flag), so every rank stops after the same step and
the checkpoint is one consistent step.

Handlers are installed only while `trainer.train` runs: before it (loading, tokenizing) a signal
has its usual effect and nothing needs saving."""
from __future__ import annotations

import signal
import sys

EXIT_INTERRUPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing `checkpoint` (the library entry's outcome)."""

    def __init__(self, step: int, checkpoint: str | None, signame: str):
        super().__init__(f"training interrupted by {signame} after step {step}")
        self.step = step
        self.checkpoint = checkpoint
        self.signame = signame


def _agree(flag: bool, device) -> bool:
    """True on every rank when any rank was signalled (a no-op without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    import torch

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def stop_callback():
    """A TrainerCallback that turns the first SIGTERM/SIGINT into a save-and-stop at the step's end.
    After `train()` returns, `.stopped_at` is the step it stopped after (None: ran to the end)."""
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        def __init__(self):
            self.signame = None
            self.stopped_at = None
            self._previous = {}

        def _handle(self, signum, frame):
            if self.signame is not None:  # the second one: no more waiting
                self._restore()
                raise KeyboardInterrupt
            self.signame = signal.Signals(signum).name
            print(f"\n{self.signame}: finishing this step and writing a checkpoint "
                  "(send it again to stop at once, without a checkpoint)", file=sys.stderr)

        def _restore(self):
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._previous = {}

        def on_train_begin(self, args, state, control, **kwargs):
            import threading

            if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
                for signum in STOP_SIGNALS:
                    self._previous[signum] = signal.signal(signum, self._handle)

        def on_step_end(self, args, state, control, **kwargs):
            if _agree(self.signame is not None, args.device):
                self.signame = self.signame or "a signal on another rank"
                self.stopped_at = state.global_step
                control.should_save = True
                control.should_training_stop = True

        def on_train_end(self, args, state, control, **kwargs):
            self._restore()

    return StopOnSignal()
