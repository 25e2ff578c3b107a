"""CPO (trl.experimental): a preference loss on the policy's own log-probabilities plus a
behaviour-cloning (NLL) term on the chosen answer; no reference model. TRL's CPOTrainer tokenizes
rows itself, as ORPO's does: `tokenize_row` is replaced to build prompt+answer sequences with -100
on the prompt from the pipeline's ids (pinned in runner.train.hooks). stage: simpo is the same
trainer with loss_type simpo (runner/train/stages/simpo.py)."""

from __future__ import annotations

from runner.train.stages.base import Stage, experimental, quiet_maps


def pipeline_row(feature) -> dict:
    """The concatenated row CPO's collator and forward read, from the pipeline's ids."""
    prompt = list(feature["prompt_input_ids"])
    out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        answer = list(feature[f"{side}_input_ids"])
        out[f"{side}_input_ids"] = prompt + answer
        out[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
        out[f"{side}_labels"] = [-100] * len(prompt) + answer
    return out


def cpo_trainer_class() -> type:
    from runner.train.trainer import RunnerMixin

    class RunnerCPOTrainer(RunnerMixin, experimental("cpo").CPOTrainer):
        def __init__(self, *args, **kwargs):
            with quiet_maps():  # CPO maps every row through tokenize_row in its constructor
                super().__init__(*args, **kwargs)

        def tokenize_row(self, feature, model=None):
            return pipeline_row(feature)

    return RunnerCPOTrainer


class CPO(Stage):
    name = "cpo"
    metric_prefixes = ("rewards/", "logps/", "nll_loss")

    def trainer_class(self) -> type:
        return cpo_trainer_class()

    def arguments(self, plan, common: dict):
        cpo = plan.training.cpo
        CPOConfig = experimental("cpo").CPOConfig
        # max_length only bounds CPO's own tokenizer, which the pipeline replaces.
        return CPOConfig(**common, beta=cpo.beta, loss_type=cpo.loss_type, cpo_alpha=cpo.alpha,
                         max_length=plan.data.sequence.max_length)

    def row_tokens(self, row: dict) -> int:
        # CPO's rows hold whole prompt+answer sequences
        return len(row["chosen_input_ids"]) + len(row["rejected_input_ids"])


STAGE = CPO()
