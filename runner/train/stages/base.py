"""What a stage is: the trainer class, its arguments, the collator, whether it needs a frozen
reference model, how many tokens a pipeline row puts through the model, and which of its logged
values go to metrics.jsonl. Importing a stage module imports no ML library; its methods do."""

from __future__ import annotations

import contextlib


class Stage:
    name = ""
    takes_reference = False          # the trainer's constructor has a ref_model argument
    metric_prefixes: tuple[str, ...] = ()   # logged keys (besides loss) written to metrics.jsonl
    auto_class = "AutoModelForCausalLM"     # the transformers class the base model loads as
    lm_head = True                          # trains through the LM head (Liger, the chunked loss apply)
    summary_metrics: dict[str, str] = {}    # final evaluation key -> summary key (RUN_COMPLETE, model card)

    def check(self, plan) -> None:
        """Refuse settings this stage cannot train with (UserError), before anything loads."""

    def trainer_class(self) -> type:
        raise NotImplementedError

    def arguments(self, plan, common: dict):
        """TrainingArguments, or the stage's TRL config, from the arguments every stage shares."""
        raise NotImplementedError

    def collator(self, plan, tokenizer):
        """The collator for the pipeline's rows; None lets the trainer build its own."""
        return None

    def trainer_inputs(self, plan, tokenizer) -> dict:
        """Constructor arguments of this stage's trainer besides those every trainer takes."""
        return {}

    def needs_reference(self, plan) -> bool:
        """A frozen copy of the base is loaded as the reference (with an adapter, the reference is
        the base with the adapter switched off, inside the trainer)."""
        return False

    def row_tokens(self, row: dict) -> int:
        raise NotImplementedError


def renamed(dataset, columns: dict, keep=()):
    """The pipeline's columns under the names a TRL collator reads; other columns dropped."""
    present = [c for c in dataset.column_names if c not in columns and c not in keep]
    dataset = dataset.remove_columns(present) if present else dataset
    return dataset.rename_columns({k: v for k, v in columns.items() if k in dataset.column_names})


@contextlib.contextmanager
def quiet_maps():
    """datasets' progress bars off while a trainer maps rows the pipeline already prepared (the
    pipeline's own progress covered the data); the setting is put back after."""
    from datasets.utils import logging as ds_logging

    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            ds_logging.enable_progress_bar()


def experimental(module: str):
    """A trl.experimental module, imported without its TRLExperimentalWarning: runner pins the TRL
    range it has tested (pyproject.toml) and tests/test_hooks.py pins the members it relies on."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        return importlib.import_module(f"trl.experimental.{module}")
