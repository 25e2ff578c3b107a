"""The reward of bench/scenarios/grpo1b.yaml, as bench/baselines/grpo1b_baseline.py defines it: the
same on both sides, cheap, so that the benchmark times generation and training, not the reward."""


def brevity(completion_ids, **kwargs):
    return [1.0 - len(ids) / 256 for ids in completion_ids]
