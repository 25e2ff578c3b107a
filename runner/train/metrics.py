"""Training metrics: metrics.jsonl (always), W&B (when a run is open), a progress bar with loss,
tokens/s and ETA, and loss.png at the end."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


def peak_memory_mb() -> float:
    """Peak accelerator memory of this process, else its peak resident memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def metrics_callback(path, tally, *, prefixes=(), wandb_run=None, progress: bool = True, is_main: bool = True):
    """`tally.count` holds the training tokens consumed so far (runner.train.trainer.TokenTally);
    logged values whose names start with one of `prefixes` (the stage's) are written too."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Writes one JSON line per logged step (train) or evaluation (eval)."""

        def __init__(self):
            self.bar = None
            self.last_time = None
            self.last_tokens = 0
            self.started = None
            self.postfix = {}

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = self.last_time = time.time()
            self.last_tokens = tally.count
            if is_main and progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                                file=sys.stderr, dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)
            if state.max_steps and state.global_step >= state.max_steps:
                # The last step is logged whatever log_every says: metrics.jsonl, loss.png and the
                # summary end where training ended.
                control.should_log = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
            if "loss" in logs:
                now = time.time()
                tokens = tally.count
                elapsed = max(now - self.last_time, 1e-9)
                row.update(
                    kind="train",
                    loss=logs.get("loss"),
                    lr=logs.get("learning_rate"),
                    grad_norm=logs.get("grad_norm"),
                    tokens=tokens,
                    tokens_per_s=round((tokens - self.last_tokens) / elapsed, 2),
                    memory_mb=round(peak_memory_mb(), 1),
                    elapsed_s=round(now - self.started, 2),
                )
                row.update({k: v for k, v in logs.items() if prefixes and k.startswith(tuple(prefixes))})
                self.last_time, self.last_tokens = now, tokens
                self.postfix = {"loss": f"{row['loss']:.4f}", "tok/s": f"{row['tokens_per_s']:.0f}"}
            elif "eval_loss" in logs:
                row.update(kind="eval", eval_loss=logs["eval_loss"])
                row.update({k: v for k, v in logs.items() if prefixes and k.startswith(tuple(f"eval_{p}" for p in prefixes))})
                self.postfix["eval"] = f"{logs['eval_loss']:.4f}"
            elif "train_runtime" in logs:
                row.update(kind="summary", **{k: v for k, v in logs.items() if isinstance(v, (int, float))})
            else:
                return
            if not is_main:
                return
            row = {k: _finite(v) for k, v in row.items()}
            with open(path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            if wandb_run is not None:
                wandb_run.log({f"{row['kind']}/{k}": v for k, v in row.items() if k not in ("kind", "step")},
                              step=state.global_step)
            if self.bar is not None:
                self.bar.set_postfix(self.postfix, refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return MetricsCallback()


def _rounded(value):
    """Four significant digits (a loss of 0.000123 stays visible); non-finite values as text."""
    if not isinstance(value, (int, float)):
        return value
    return float(f"{value:.4g}") if math.isfinite(value) else str(value)


def run_summary(state, final_eval: dict) -> dict:
    """What a finished run reports (RUN_COMPLETE, model card): the optimizer steps taken and the
    last training loss logged, from the trainer's own state; with the final step always logged,
    that loss is the mean over the steps since the log before it."""
    losses = [row for row in state.log_history if "loss" in row]
    return {
        "steps": state.global_step,
        "final_loss": _rounded(losses[-1]["loss"]) if losses else None,
        "final_loss_step": losses[-1].get("step") if losses else None,
        "final_eval_loss": _rounded((final_eval or {}).get("eval_loss")),
    }


def read_metrics(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(metrics_path, png_path) -> bool:
    """loss.png: train loss and (when present) eval loss against the optimizer step; for GRPO a
    panel below with the rewards."""
    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train" and isinstance(r.get("loss"), (int, float))]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("kind") == "eval"]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = reward_series(rows)
    if rewards:  # stage grpo: a second panel with the total reward and each reward's mean
        fig, (ax, rax) = plt.subplots(2, 1, figsize=(7, 7), dpi=100, sharex=True)
        for name, points in rewards.items():
            rax.plot(*zip(*points), marker="o" if len(points) < 20 else None, label=name,
                     linewidth=2.0 if name == "total reward" else 1.0)
        rax.set_xlabel("optimizer step")
        rax.set_ylabel("reward (mean)")
        rax.grid(alpha=0.3)
        rax.legend()
    else:
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:  # a marker per point on a short run: a single point draws no line
        ax.plot(*zip(*train), marker="o" if len(train) < 20 else None, label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", linewidth=1.2)
    if not rewards:
        ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return True


def reward_series(rows: list[dict]) -> dict:
    """{"total reward": [(step, mean)], NAME: [(step, mean)]} from GRPO's logged rewards (empty for
    other stages)."""
    out: dict = {}
    for r in rows:
        if r.get("kind") != "train":
            continue
        for key, value in r.items():
            if not isinstance(value, (int, float)):
                continue
            if key == "reward":
                out.setdefault("total reward", []).append((r["step"], value))
            elif key.startswith("rewards/") and key.endswith("/mean"):
                out.setdefault(key[len("rewards/"):-len("/mean")], []).append((r["step"], value))
    return out
