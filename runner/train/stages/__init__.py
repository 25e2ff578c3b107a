"""Training stages: one file each (sft.py, pt.py, dpo.py, ...), each defining STAGE, an instance of
runner.train.stages.base.Stage. A new stage is a new file here plus its entry in the schema's
`training.stage` enum and `x-stages` table (docs/architecture.md, "Adding a stage")."""

from __future__ import annotations

import importlib


def get(name: str):
    """The Stage object of `training.stage: name`."""
    return importlib.import_module(f"runner.train.stages.{name}").STAGE
