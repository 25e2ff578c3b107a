"""KTO: TRL's KTOTrainer on the pipeline's prompt / completion ids and good-or-bad labels. As for DPO,
`_prepare_dataset` is replaced by a column rename (pinned in runner.train.hooks)."""

from __future__ import annotations

from runner.errors import UserError
from runner.train.stages.base import Stage, renamed

COLUMNS = {"prompt_input_ids": "prompt_ids", "completion_input_ids": "completion_ids"}


class KTO(Stage):
    name = "kto"
    takes_reference = True
    metric_prefixes = ("rewards/", "logps/", "kl")

    def check(self, plan) -> None:
        if plan.training.micro_batch_size < 2:
            raise UserError("KTO estimates its KL term inside a micro batch: micro_batch_size must be at least 2",
                            where="training.micro_batch_size")

    def trainer_class(self) -> type:
        import trl

        from runner.train.trainer import RunnerMixin

        class RunnerKTOTrainer(RunnerMixin, trl.KTOTrainer):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                dataset = renamed(dataset, COLUMNS, keep=("label",))
                if self.calculate_KL:
                    # KTO's KL estimate pairs each prompt with a neighbour's completion inside a batch
                    # (what TRL's own preparation does after tokenizing).
                    def mismatch(batch):
                        ids = batch["completion_ids"]
                        return {"KL_completion_ids": [ids[-1]] + ids[:-1]}

                    dataset = dataset.map(mismatch, batched=True, batch_size=args.per_device_train_batch_size)
                return dataset

        return RunnerKTOTrainer

    def arguments(self, plan, common: dict):
        import trl

        kto = plan.training.kto
        return trl.KTOConfig(**common, beta=kto.beta, desirable_weight=kto.desirable_weight,
                             undesirable_weight=kto.undesirable_weight, max_length=None)

    def needs_reference(self, plan) -> bool:
        return plan.adapter.kind != "lora"

    def row_tokens(self, row: dict) -> int:
        # the pair, plus the mismatched pair of the KL estimate
        kl = len(row["prompt_ids"]) + len(row["KL_completion_ids"]) if "KL_completion_ids" in row else 0
        return len(row["prompt_ids"]) + len(row["completion_ids"]) + kl


STAGE = KTO()
