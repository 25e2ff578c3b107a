"""Axolotl's `rl: grpo`: its `trl:` section's GRPO keys as `training.grpo`. Axolotl names reward
functions as importable modules ("rewards.my_reward", a rewards.py beside the config); runner reads
them from the file ("rewards.py:my_reward", relative to the config), without importing it."""

from __future__ import annotations

from runner.importers.common import Translation, is_unset

# trl.<key> -> training.grpo.<key>, carried over as they are
SAME = ("num_generations", "max_completion_length", "temperature", "top_p", "epsilon", "epsilon_high",
        "num_iterations", "mask_truncated_completions")
LOSSES = ("grpo", "dr_grpo", "dapo", "bnpo")
VLLM = ("use_vllm", "vllm_mode", "vllm_server_host", "vllm_server_port", "vllm_gpu_memory_utilization",
        "vllm_server_timeout", "vllm_enable_sleep_mode")


def grpo_keys(keys: dict, tr: Translation) -> None:
    trl = dict(keys.get("trl") or {})
    for key in SAME:
        if not is_unset(trl.get(key)):
            tr.set(f"training.grpo.{key}", trl.pop(key))
    if not is_unset(trl.get("beta")):
        tr.set("training.grpo.beta", trl.pop("beta"))
    loss = trl.pop("loss_type", None)
    if not is_unset(loss):
        if loss in LOSSES:
            tr.set("training.grpo.loss_type", loss)
        else:
            tr.skip("trl.loss_type", loss, f"runner's GRPO takes {', '.join(LOSSES)}")
    scale = trl.pop("scale_rewards", None)
    if not is_unset(scale):
        tr.set("training.grpo.scale_rewards", {True: "group", False: "none"}.get(scale, scale))
    funcs = trl.pop("reward_funcs", None) or []
    weights = trl.pop("reward_weights", None) or []
    rewards = []
    for i, name in enumerate(funcs):
        module, _, fn = str(name).rpartition(".")
        if not module:
            tr.skip(f"trl.reward_funcs[{i}]", name, "a reward is module.function")
            continue
        reward = {"function": f"{module.replace('.', '/')}.py:{fn}"}
        if i < len(weights) and not is_unset(weights[i]):
            reward["weight"] = weights[i]
        rewards.append(reward)
        tr.note(f"trl.reward_funcs[{i}]", f"read from {reward['function'].split(':')[0]} beside the config "
                "(runner checks the file at lint and imports it at train)")
    if rewards:
        tr.set("training.grpo.rewards", rewards)
    for key in VLLM:
        if key in trl:
            value = trl.pop(key)
            if not is_unset(value) and value is not False:
                tr.skip(f"trl.{key}", value, "runner generates with transformers (training.grpo.continuous_batching)")
    keys["trl"] = trl
