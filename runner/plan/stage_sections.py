"""The typed settings of each training stage (`training.dpo`, `training.grpo`, ...): frozen
dataclasses read and written by runner.plan.sections like every other section."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DPO:
    beta: float
    loss_type: str
    label_smoothing: float
    sft_weight: float


@dataclass(frozen=True)
class KTO:
    beta: float
    desirable_weight: float
    undesirable_weight: float


@dataclass(frozen=True)
class ORPO:
    beta: float


@dataclass(frozen=True)
class Reward:
    function: str | None           # a built-in's name or "file.py:function" (relative to the config)
    reward_model: str | None       # a stage-rm run directory (relative to the config)
    weight: float
    args: dict
    name: str | None


@dataclass(frozen=True)
class GRPO:
    num_generations: int
    max_completion_length: int
    temperature: float
    top_p: float
    beta: float
    loss_type: str
    epsilon: float
    epsilon_high: float | None
    num_iterations: int
    scale_rewards: str
    mask_truncated_completions: bool
    continuous_batching: bool
    rewards: tuple[Reward, ...]


@dataclass(frozen=True)
class RM:
    center_rewards: float


@dataclass(frozen=True)
class SimPO:
    beta: float
    gamma: float


@dataclass(frozen=True)
class CPO:
    beta: float
    alpha: float
    loss_type: str
