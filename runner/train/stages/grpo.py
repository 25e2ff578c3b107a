"""GRPO: TRL's GRPOTrainer on the pipeline's prompts, rewarded by `training.grpo.rewards`
(runner.train.rewards). The prompts are text rendered by runner's template; TRL would tokenize them
with the tokenizer's special tokens added (a second BOS on Llama-style tokenizers), so
`_tokenize_prompts` hands it the pipeline's own ids (a private hook, pinned in runner.train.hooks).
micro_batch_size counts completions: each optimizer step trains on
micro_batch_size x gradient_accumulation x processes / num_generations prompts."""

from __future__ import annotations

import os

from runner.errors import UserError
from runner.train.stages.base import Stage

# Logged values of GRPOTrainer kept in metrics.jsonl: the total reward and its std, each reward's mean
# and std (rewards/NAME/mean), the KL to the reference (beta > 0), completion lengths, the share of
# clipped ratios, the entropy and the share of groups whose rewards are all equal.
METRICS = ("reward", "kl", "completions/", "clip_ratio", "entropy", "frac_reward_zero_std")
PAGE_TOKENS = 256  # transformers' default page: tokens per block of the paged KV cache


def cache_settings(plan, cpu: bool) -> dict:
    """Continuous batching's KV cache sized to one generation round (every completion of it at
    sequence.max_length, prompt and completion together) instead of TRL's default of half the free
    memory: that default takes half of a CPU machine's RAM per process, and on a GPU memory that
    training needs."""
    t = plan.training
    sequences = t.micro_batch_size * t.gradient_accumulation  # TRL generates for GA micro batches at once
    length = plan.data.sequence.max_length
    pages = -(-length // PAGE_TOKENS) + 1
    return {"num_blocks": sequences * pages,
            "max_batch_tokens": min(sequences * length, 512 if cpu else 8192)}


class GRPO(Stage):
    name = "grpo"
    metric_prefixes = METRICS

    def check(self, plan) -> None:
        g, t = plan.training.grpo, plan.training
        world = plan.runtime.world_size if plan.runtime is not None else int(os.environ.get("WORLD_SIZE", "1") or 1)
        completions = t.batch_per_process * world
        if completions % g.num_generations:
            raise UserError(f"training.grpo.num_generations ({g.num_generations}) must divide the completions of "
                            f"one optimizer step: micro_batch_size x gradient_accumulation x processes = "
                            f"{t.micro_batch_size} x {t.gradient_accumulation} x {world} = {completions}",
                            where="training.grpo.num_generations",
                            hint=f"e.g. micro_batch_size: {g.num_generations} (micro_batch_size counts completions)")

        if g.beta and plan.adapter.kind != "lora":
            # TRL would load the reference from the model's hub name, not the base runner loaded
            raise UserError(f"training.grpo.beta > 0 with adapter.kind {plan.adapter.kind} is not supported: the "
                            "reference model would not be the base runner loaded", where="training.grpo.beta",
                            hint="use adapter.kind: lora (the reference is the adapter as it started), or beta: 0")

    def trainer_class(self) -> type:
        import trl

        from runner.train.trainer import RunnerMixin

        class RunnerGRPOTrainer(RunnerMixin, trl.GRPOTrainer):
            def __init__(self, *args, data_collator=None, reward_funcs=None, **kwargs):
                # GRPO batches are rows of prompts (its own identity collator); TRL takes no collator.
                super().__init__(*args, reward_funcs=reward_funcs, **kwargs)
                self.data_collator = self.data_collator.collator  # uncounted: compute_loss counts tokens

            def _tokenize_prompts(self, prompts: list):
                ids = self.processing_class(text=prompts, add_special_tokens=False)["input_ids"]
                return ids, None, {}

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                if model.training:  # prompt + completion tokens this micro batch puts through the model
                    self.runner.tally.count += int(inputs["prompt_mask"].sum()) + int(inputs["completion_mask"].sum())
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)

        return RunnerGRPOTrainer

    def arguments(self, plan, common: dict):
        import trl

        g = plan.training.grpo
        weights = [r.weight for r in g.rewards]
        common = dict(common, per_device_eval_batch_size=common["per_device_train_batch_size"])
        return trl.GRPOConfig(
            **common, num_generations=g.num_generations, max_completion_length=g.max_completion_length,
            temperature=g.temperature, top_p=g.top_p, beta=g.beta, loss_type=g.loss_type, epsilon=g.epsilon,
            epsilon_high=g.epsilon_high, num_iterations=g.num_iterations, scale_rewards=g.scale_rewards,
            mask_truncated_completions=g.mask_truncated_completions, reward_weights=weights,
            use_transformers_continuous_batching=g.continuous_batching,
            transformers_continuous_batching_config=(cache_settings(plan, bool(common.get("use_cpu")))
                                                     if g.continuous_batching else None),
            # runner sets the seed and logs itself; the model is already built (adapter applied)
            log_completions=False, shuffle_dataset=plan.data.shuffle)

    def trainer_inputs(self, plan, tokenizer) -> dict:
        """The reward functions, built (and their signatures checked) before the first step."""
        from runner.train.rewards import build_rewards

        return {"reward_funcs": build_rewards(plan, tokenizer)}

    def row_tokens(self, row: dict) -> int:
        return len(row["prompt_input_ids"])


STAGE = GRPO()
