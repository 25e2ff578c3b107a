"""Direct preference optimisation: TRL's DPOTrainer on the pipeline's prompt / chosen / rejected
ids. TRL re-templates and re-tokenizes in `_prepare_dataset`; the subclass replaces that one method
with a column rename (a private hook, pinned in runner.train.hooks)."""

from __future__ import annotations

from runner.train.stages.base import Stage, renamed

COLUMNS = {"prompt_input_ids": "prompt_ids", "chosen_input_ids": "chosen_ids", "rejected_input_ids": "rejected_ids"}
VISION_COLUMNS = ("prompt", "chosen", "rejected", "images", "videos")


class DPO(Stage):
    name = "dpo"
    takes_reference = True
    metric_prefixes = ("rewards/", "logps/")

    def trainer_class(self) -> type:
        import trl

        from runner.train.trainer import RunnerMixin

        class RunnerDPOTrainer(RunnerMixin, trl.DPOTrainer):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                # Rows with images keep their rendered texts and media for the vision collator.
                keep = VISION_COLUMNS if "images" in dataset.column_names else ()
                return renamed(dataset, COLUMNS, keep=keep)

        return RunnerDPOTrainer

    def arguments(self, plan, common: dict):
        import trl

        dpo = plan.training.dpo
        losses = [dpo.loss_type] + (["sft"] if dpo.sft_weight else [])
        weights = [1.0, dpo.sft_weight] if dpo.sft_weight else None
        # The pipeline truncated already: max_length None keeps the collator from cutting again.
        return trl.DPOConfig(**common, beta=dpo.beta, loss_type=losses, loss_weights=weights,
                             label_smoothing=dpo.label_smoothing, max_length=None)

    def needs_reference(self, plan) -> bool:
        return plan.adapter.kind != "lora"

    def row_tokens(self, row: dict) -> int:
        # prompt+chosen and prompt+rejected
        # (rows with images reach the collator as the pipeline wrote them: TRL prepares no vision dataset)
        ids = {short: row[short] if short in row else row[long] for long, short in COLUMNS.items()}
        return 2 * len(ids["prompt_ids"]) + len(ids["chosen_ids"]) + len(ids["rejected_ids"])


STAGE = DPO()
