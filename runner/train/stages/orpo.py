"""ORPO (trl.experimental): no reference model. Its concatenated forward wants prompt+answer sequences
with -100 on the prompt: `tokenize_row` is replaced to build them from the pipeline's ids (pinned in
runner.train.hooks)."""

from __future__ import annotations

from runner.train.stages.base import Stage


class ORPO(Stage):
    name = "orpo"
    metric_prefixes = ("rewards/", "logps/")

    def trainer_class(self) -> type:
        from trl.experimental.orpo import ORPOTrainer

        from runner.train.trainer import RunnerMixin

        class RunnerORPOTrainer(RunnerMixin, ORPOTrainer):
            def tokenize_row(self, feature, model=None):
                prompt = list(feature["prompt_input_ids"])
                out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
                for side in ("chosen", "rejected"):
                    answer = list(feature[f"{side}_input_ids"])
                    out[f"{side}_input_ids"] = prompt + answer
                    out[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
                    out[f"{side}_labels"] = [-100] * len(prompt) + answer
                return out

        return RunnerORPOTrainer

    def arguments(self, plan, common: dict):
        from trl.experimental.orpo import ORPOConfig

        # max_length only bounds ORPO's own tokenizer, which the pipeline replaces.
        return ORPOConfig(**common, beta=plan.training.orpo.beta, max_length=plan.data.sequence.max_length)

    def row_tokens(self, row: dict) -> int:
        # ORPO's rows hold whole prompt+answer sequences
        return len(row["chosen_input_ids"]) + len(row["rejected_input_ids"])


STAGE = ORPO()
