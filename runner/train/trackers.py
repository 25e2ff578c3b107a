"""The trackers beside W&B (runner.train.tracking): TensorBoard, MLflow and SwanLab, any number at once.

Each one, like W&B:
- gets the plan and its hashes as the run's parameters (flattened to dotted names where the tracker
  takes flat values: TensorBoard's hparams, MLflow's params; SwanLab takes the nested config);
- gets metrics.jsonl's rows under W&B's names (`train/loss`, `train/tokens_per_s`, `eval/eval_loss`),
  at the optimizer step;
- continues the same run when training resumes: MLflow and SwanLab by the run id stored in
  plan.json's launch record, TensorBoard by its folder in the run directory.

A killed launch may have logged steps after its last checkpoint, which the resumed launch trains
again. TensorBoard purges them (the writer's purge_step: its readers drop the earlier events from
that step on); MLflow and SwanLab cannot delete a logged value, so, as W&B does with a step below its
last one, a step a tracker already holds is not sent to it again. A secret (MLflow's token,
SwanLab's key) only ever lives in this process's environment, as W&B's key does."""
from __future__ import annotations

import json
import sys

from runner.plan.sections import to_dict


class Trackers:
    """The open trackers of this process (none on ranks other than 0). `log` takes what W&B's
    run.log takes: the metrics callback hands it each row."""

    def __init__(self, wandb=None, others=()):
        self.wandb = wandb
        self.others = list(others)

    def log(self, values: dict, step: int) -> None:
        if self.wandb is not None:
            self.wandb.log(values, step=step)
        numbers = {k: v for k, v in ((k, _number(v)) for k, v in values.items()) if v is not None}
        for tracker in list(self.others):
            try:
                tracker.log(numbers, step)
            except Exception as exc:  # a tracking server going away must not stop training
                print(f"warning: {tracker.name} stopped logging at step {step}: {exc}; metrics.jsonl has every "
                      "step", file=sys.stderr)
                self.others.remove(tracker)

    def finish(self, summary: dict | None = None, *, interrupted: bool = False) -> None:
        from runner.train.tracking import finish_wandb

        finish_wandb(self.wandb, summary)
        for tracker in self.others:
            tracker.finish(interrupted=interrupted)

    def run_ids(self) -> dict | None:
        ids = {t.name: t.run_id for t in self.others if t.run_id}
        return ids or None


def start(plan, run_dir, wandb=None, *, is_main: bool = True, stored: dict | None = None,
          resume_step: int | None = None) -> Trackers:
    """The trackers the plan asks for, on rank 0. `stored`: the plan.json of the launch being
    resumed (its tracker run ids); `resume_step`: the step of the checkpoint it resumes from."""
    settings = plan.tracking
    if not is_main or not (settings.tensorboard or settings.mlflow or settings.swanlab):
        return Trackers(wandb)
    ids = {"mlflow": None, "swanlab": None, **(((stored or {}).get("launch") or {}).get("tracker_runs") or {})}
    opened = []
    try:
        if settings.tensorboard:
            from runner.train.tracker_tensorboard import TensorBoard

            opened.append(TensorBoard(plan, run_dir, resume_step))
        if settings.mlflow:
            from runner.train.tracker_mlflow import MLflow

            opened.append(MLflow(plan, run_dir, ids["mlflow"]))
        if settings.swanlab:
            from runner.train.tracker_swanlab import start_swanlab

            swan = start_swanlab(plan, run_dir, ids["swanlab"])
            if swan is not None:
                opened.append(swan)
    except BaseException:
        for tracker in opened:
            tracker.finish(interrupted=True)
        raise
    return Trackers(wandb, opened)


def run_parameters(plan, run_dir) -> dict:
    """The plan (its typed sections, the Runtime) and its hashes as flat `section.key` parameters.
    The config section is left out: the typed sections hold the same values, resolved."""
    values = {k: v for k, v in plan.to_dict().items() if k not in ("config", "launch")}
    flat = flatten(values)
    flat["run_dir"] = str(run_dir)
    return flat


def run_config(plan, run_dir) -> dict:
    """What W&B's run config holds: the whole plan, its hashes, the run directory."""
    return {
        "runner_plan": plan.to_dict(),
        "hashes": {k: v for k, v in to_dict(plan.hashes).items() if isinstance(v, str)},
        "run_dir": str(run_dir),
    }


def flatten(value, prefix: str = "") -> dict:
    """Nested dicts as dotted keys; scalars kept; None, lists and empty dicts as JSON text."""
    if isinstance(value, dict) and value:
        out = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, (str, bool, int, float)):
        return {prefix: value}
    return {prefix: json.dumps(value, sort_keys=True, default=str)}


def _number(value):
    """A loggable number: metrics.jsonl writes a non-finite value as text ("nan")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value)
    return None


def resume_step(checkpoint: str | None) -> int | None:
    """The step of a `checkpoint-N` folder a launch resumes from."""
    if not checkpoint:
        return None
    tail = str(checkpoint).rstrip("/").rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None
