"""Reward model: TRL's RewardTrainer on the pipeline's preference rows. The base loads as a sequence
classifier with one label (a `score` head on the last token); the loss is -log sigmoid(r_chosen -
r_rejected). TRL expects whole sequences as `chosen_ids` / `rejected_ids`: `_prepare_dataset` is
replaced by prompt + answer concatenation (a private hook, pinned in runner.train.hooks), so the
trainer sees exactly the pipeline's tokens. With LoRA, PEFT's sequence-classification task saves
the trained score head with the adapter (`modules_to_save`)."""

from __future__ import annotations

import re

from runner.errors import UserError
from runner.train.stages.base import Stage, quiet_maps

HEAD = "score"   # transformers' name for the head of *ForSequenceClassification decoder models


def whole_sequences(dataset):
    """prompt + chosen and prompt + rejected, under the names TRL's preference collator reads."""
    def join(row):
        prompt = list(row["prompt_input_ids"])
        return {"chosen_ids": prompt + list(row["chosen_input_ids"]),
                "rejected_ids": prompt + list(row["rejected_input_ids"])}

    with quiet_maps():
        return dataset.map(join, remove_columns=dataset.column_names)


class RewardModel(Stage):
    name = "rm"
    auto_class = "AutoModelForSequenceClassification"
    lm_head = False
    metric_prefixes = ("accuracy", "margin", "mean_reward")
    summary_metrics = {"eval_accuracy": "final_eval_accuracy"}

    def check(self, plan) -> None:
        adapter = plan.adapter
        if adapter.kind == "freeze" and not any(re.search(p, f"{HEAD}.weight") for p in adapter.trainable_modules):
            raise UserError("a reward model's score head starts random and must train, but adapter.kind: freeze "
                            "leaves it frozen", where="adapter.trainable_modules",
                            hint=f"add '^{HEAD}\\.' to adapter.trainable_modules, or use kind: lora or full")
        if plan.training.liger is True:
            raise UserError("training.liger fuses a language-model head with its loss; a reward model has a score "
                            "head instead", where="training.liger", hint="use liger: auto or false with stage: rm")

    def trainer_class(self) -> type:
        import trl

        from runner.train.trainer import RunnerMixin

        class RunnerRewardTrainer(RunnerMixin, trl.RewardTrainer):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                return whole_sequences(dataset)

        return RunnerRewardTrainer

    def arguments(self, plan, common: dict):
        import trl

        center = plan.training.rm.center_rewards
        # The pipeline truncated already: max_length None keeps TRL from dropping rows again.
        return trl.RewardConfig(**common, max_length=None, center_rewards_coefficient=center or None)

    def row_tokens(self, row: dict) -> int:
        return len(row["chosen_ids"]) + len(row["rejected_ids"])


STAGE = RewardModel()
