"""Continued pretraining: SFT's trainer on plain text, every token trained."""

from __future__ import annotations

from runner.train.stages.sft import SFT


class PT(SFT):
    name = "pt"


STAGE = PT()
