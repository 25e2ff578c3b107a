"""Supervised fine-tuning: transformers' Trainer on the pipeline's input_ids / labels (and
position_ids when packed) with the model's own loss. TRL's SFTTrainer adds nothing needed here: its
value is dataset preparation, which the pipeline does."""

from __future__ import annotations

from runner.train.stages.base import Stage


class SFT(Stage):
    name = "sft"

    def trainer_class(self) -> type:
        from transformers import Trainer

        from runner.train.trainer import RunnerMixin

        return type("RunnerTrainer", (RunnerMixin, Trainer), {})

    def arguments(self, plan, common: dict):
        from transformers import TrainingArguments

        return TrainingArguments(**common, label_names=["labels"])

    def collator(self, plan, tokenizer):
        from runner.data.collate import make_collator

        return make_collator(plan, tokenizer)

    def row_tokens(self, row: dict) -> int:
        return len(row["input_ids"])


STAGE = SFT()
