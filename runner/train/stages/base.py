"""What a stage is: the trainer class, its arguments, the collator, whether it needs a frozen
reference model, how many tokens a pipeline row puts through the model, and which of its logged
values go to metrics.jsonl. Importing a stage module imports no ML library; its methods do."""

from __future__ import annotations


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
