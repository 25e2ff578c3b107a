"""The run's length and cadences in optimizer steps, as transformers' Trainer counts them: steps
per epoch, total steps, and the evaluation and checkpoint intervals (decide_runtime's arithmetic)."""

from __future__ import annotations

import math

from runner.plan.plan import Plan


def steps_per_epoch(plan: Plan, train_rows: int, world_size: int) -> int:
    """Optimizer steps of one epoch as transformers' Trainer counts them: each process's dataloader
    holds ceil(batches / processes) micro batches (Accelerate keeps batches even), and an epoch takes
    ceil(that / accumulation) steps."""
    t = plan.training
    if t.stage == "grpo":  # each prompt is sampled num_generations times; micro_batch_size counts completions
        train_rows *= t.grpo.num_generations
    batches = math.ceil(math.ceil(train_rows / t.micro_batch_size) / world_size)
    return max(math.ceil(batches / t.gradient_accumulation), 1)


def total_steps(plan: Plan, train_rows: int, world_size: int) -> int:
    """Optimizer steps of the run: max_steps when set, else epochs x steps_per_epoch."""
    t = plan.training
    if t.max_steps:
        return t.max_steps
    return math.ceil(t.epochs * steps_per_epoch(plan, train_rows, world_size))


def cadences(plan: Plan, per_epoch: int, warnings: list[str]) -> dict:
    """Evaluation and checkpoint intervals in optimizer steps: the step counts as given, or N per
    epoch made steps (every per_epoch // N steps, at least every step). keep_best checkpoints at
    every evaluation, so that each evaluated step can be the one kept."""
    t, out = plan.training, plan.output

    def per(count: int | None, key: str) -> int | None:
        if not count:
            return None
        if count > per_epoch:
            warnings.append(f"note: {key}: {count} asks for more than the {per_epoch} optimizer step"
                            f"{'s' * (per_epoch != 1)} of an epoch: every step")
        return max(per_epoch // count, 1)

    eval_steps = t.eval_every or per(t.evals_per_epoch, "training.evals_per_epoch")
    save_steps = out.save_every or per(out.saves_per_epoch, "output.saves_per_epoch")
    if out.keep_best:
        save_steps = eval_steps
    return {"steps_per_epoch": per_epoch, "eval_steps": eval_steps, "save_steps": save_steps}

