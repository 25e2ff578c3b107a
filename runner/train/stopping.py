"""Early stopping and the best checkpoint (training.early_stopping, output.keep_best), on the
Trainer's own machinery: `metric_for_best_model` makes it track state.best_metric, best_global_step
and best_model_checkpoint (runner.train.arguments.best_model_arguments), transformers'
EarlyStoppingCallback counts evaluations without improvement, and `load_best_model_at_end` loads the
best checkpoint's weights before the final save. What runner adds:

- the counter survives a kill: the callback is an ExportableState, so every checkpoint's
  trainer_state.json holds it (stateful_callbacks) and a resumed launch restores it
  (`restore_callback_states_from_checkpoint`); the resumed run stops at the same step;
- the step where training stops writes no checkpoint (unless it is keep_best's new best): a launch
  resumed after a kill never starts from a run that had already stopped, it replays up to the stop;
- a metric the evaluation does not log is an error naming the ones it does, at the first evaluation;
- the outcome (stopped early at, best step and value) for the summary, the card and plan.json."""
from __future__ import annotations

import math
import sys
from pathlib import Path

from runner.errors import UserError


def early_stopping_callback(plan, is_main: bool):
    """transformers' EarlyStoppingCallback, with what runner adds (above)."""
    from transformers import EarlyStoppingCallback

    stopping = plan.training.early_stopping
    keep_best = plan.output.keep_best

    class RunnerEarlyStopping(EarlyStoppingCallback):
        # Rebuilt by the Trainer from state()["args"] on resume: the constructor stays the parent's.
        stopped_at: int | None = None
        evaluated_step: int | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            pass  # the parent's checks are runner's config checks; its warning is about keep_best

        def on_evaluate(self, args, state, control, metrics, **kwargs):
            if state.global_step == self.evaluated_step:
                return  # the final evaluation after training repeats the last step's: not another one
            self.evaluated_step = state.global_step
            if stopping.metric not in metrics:
                logged = ", ".join(sorted(k for k in metrics if k.startswith("eval_") and _is_number(metrics[k])))
                raise UserError(f"the evaluation logs no {stopping.metric} (it logs {logged})",
                                where="training.early_stopping.metric", hint=f"use one of: {logged}")
            previous_best = state.best_metric
            super().on_evaluate(args, state, control, metrics, **kwargs)
            if self.early_stopping_patience_counter < self.early_stopping_patience:
                return
            self.stopped_at = state.global_step
            new_best = previous_best is None or _better(metrics[stopping.metric], previous_best, stopping.mode)
            if not (keep_best and new_best):
                control.should_save = False
            if is_main:
                best = "" if previous_best is None else f" (best {_short(previous_best)})"
                print(f"early stopping at step {state.global_step}: {stopping.metric} {_short(metrics[stopping.metric])} "
                      f"has not improved by more than {stopping.min_delta:g} for {self.early_stopping_patience} "
                      f"evaluation{'s' * (self.early_stopping_patience != 1)}{best}", file=sys.stderr)

    return RunnerEarlyStopping(early_stopping_patience=stopping.patience, early_stopping_threshold=stopping.min_delta)


def outcome(plan, trainer) -> dict:
    """How training ended, for RUN_COMPLETE, the model card and plan.json: the step early stopping
    stopped at, and with keep_best the checkpoint whose weights are the final ones."""
    from transformers import EarlyStoppingCallback

    out: dict = {}
    # On resume the Trainer replaces the callback with one rebuilt from the checkpoint: look it up.
    stopper = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, EarlyStoppingCallback)), None)
    if plan.training.early_stopping is not None:
        out["stopped_early_at"] = stopper.stopped_at if stopper is not None else None
    if plan.output.keep_best:
        metric = plan.training.early_stopping.metric if plan.training.early_stopping else "eval_loss"
        best = trainer.state.best_model_checkpoint
        step = int(Path(best).name.rsplit("-", 1)[-1]) if best else None
        evaluated = {row["step"]: row for row in trainer.state.log_history if metric in row}
        out["best"] = {"step": step, "metric": metric,
                       "value": evaluated[step][metric] if step in evaluated else None,
                       "eval_loss": evaluated[step].get("eval_loss") if step in evaluated else None}
    return out


def _better(value: float, best: float, mode: str) -> bool:
    return value > best if mode == "max" else value < best


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)
