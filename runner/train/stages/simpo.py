"""SimPO: TRL's CPO trainer with loss_type simpo (length-normalised log-probability rewards and a
target margin gamma) and cpo_alpha 0 (no behaviour-cloning term); no reference model. Rows reach
the trainer as for stage: cpo (runner/train/stages/cpo.py)."""

from __future__ import annotations

from runner.train.stages.base import experimental
from runner.train.stages.cpo import CPO


class SimPO(CPO):
    name = "simpo"
    metric_prefixes = ("rewards/", "logps/")

    def arguments(self, plan, common: dict):
        simpo = plan.training.simpo
        return experimental("cpo").CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=simpo.beta, simpo_gamma=simpo.gamma,
                         max_length=plan.data.sequence.max_length)


STAGE = SimPO()
