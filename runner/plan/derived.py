"""Values the resolver derives from config sections (kept apart from runner.plan.resolve, which
assembles the Plan from them)."""

from __future__ import annotations

from runner.config.checks import best_direction, eval_metric_name


def without(d: dict, keys) -> dict:
    """`d` less `keys`."""
    return {k: v for k, v in d.items() if k not in keys}


def vision_part(data: dict) -> dict:
    """How images and videos become tokens, in the data hash once set apart from its defaults (the
    tower/projector choice is a training matter). At its defaults it is left out, so a text run keeps
    the data hash it had before the section existed."""
    from runner.config import schema

    vision = without(data["vision"], ("tower", "projector"))
    default = without(schema.fill_defaults({})["vision"], ("tower", "projector"))
    return {} if vision == default else {"vision": vision}


def prompt_budget(cfg: dict) -> int | None:
    """Stage grpo: the most tokens a prompt may have, so that prompt + completion fit max_length."""
    if cfg["training"]["stage"] != "grpo":
        return None
    return cfg["sequence"]["max_length"] - cfg["training"]["grpo"]["max_completion_length"]


def resolve_early_stopping(stopping: dict) -> dict:
    """The metric under the name the Trainer logs it (`eval_` prefixed) and `mode: auto` decided
    from that name (runner.config.checks has refused a name it cannot decide)."""
    metric = eval_metric_name(stopping["metric"])
    mode = stopping["mode"] if stopping["mode"] != "auto" else best_direction(metric)
    return {**stopping, "metric": metric, "mode": mode}
