"""GRPO's reward functions, built from `training.grpo.rewards` before the first step: the built-ins
(TRL's accuracy via math_verify, think format and soft overlong punishment; exact match and a regex
format), a user function from a file (its signature checked here, not at the first step), and a
reward model's score. Each is called as TRL calls a reward, f(prompts=, completions=,
completion_ids=, **kwargs), the dataset's `reference` column among the kwargs, and is named (for
rewards/NAME/mean) by runner.plan.rewards.reward_name."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys

from runner.errors import UserError
from runner.plan.rewards import reward_name, resolve_path, user_function

# The names TRL passes to every reward besides the dataset's columns.
TRL_PASSES = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
# The dataset's columns (runner.data.prompts) a reward receives in kwargs.
COLUMNS = ("reference", "prompt_input_ids")


def build_rewards(plan, tokenizer) -> list:
    out = []
    g = plan.training.grpo
    for i, reward in enumerate(g.rewards):
        where = f"training.grpo.rewards[{i}]"
        if reward.reward_model is not None:
            fn = reward_model(resolve_path(reward.reward_model, plan.config_dir), where)
        elif user_function(reward.function) is not None:
            fn = user_reward(plan.config_dir, reward.function, dict(reward.args), where)
        else:
            fn = builtin(reward.function, dict(reward.args), g.max_completion_length)
        fn.__name__ = reward_name(reward)
        out.append(fn)
    return out


def _messages(completions):
    """TRL's built-ins read conversational completions; the pipeline's prompts are text."""
    return [[{"role": "assistant", "content": c}] for c in completions]


def builtin(name: str, args: dict, max_completion_length: int):
    if name == "accuracy":
        from trl.rewards import accuracy_reward

        def accuracy(completions, reference, **kwargs):
            return accuracy_reward(_messages(completions), reference)
        return accuracy
    if name == "think_format":
        from trl.rewards import think_format_reward

        def think_format(completions, **kwargs):
            return think_format_reward(_messages(completions))
        return think_format
    if name == "soft_overlong":
        from trl.rewards import get_soft_overlong_punishment

        punish = get_soft_overlong_punishment(max_completion_length, int(args.get("cache", max_completion_length // 4)))

        def soft_overlong(completion_ids, **kwargs):
            return punish(completion_ids)
        return soft_overlong
    if name == "exact_match":
        fold = (lambda s: s.strip().casefold()) if args.get("ignore_case") else str.strip

        def exact_match(completions, reference, **kwargs):
            return [float(fold(c) == fold(r)) if r else None for c, r in zip(completions, reference)]
        return exact_match
    if name == "format":
        pattern = re.compile(args["pattern"], re.DOTALL)

        def format(completions, **kwargs):  # noqa: A001 (the reward's name in the metrics)
            return [1.0 if pattern.search(c) else 0.0 for c in completions]
        return format
    raise UserError(f"unknown reward {name!r}")  # runner lint refuses it first


def user_reward(config_dir: str, spec: str, args: dict, where: str):
    """The user's function, loaded from its file (relative to the config) and checked to accept the
    keywords TRL passes; its errors name the reward and the file."""
    path_text, name = user_function(spec)
    path = resolve_path(path_text, config_dir)
    module_name = f"runner_reward_{abs(hash(str(path)))}"
    try:
        spec_ = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec_)
        sys.modules[module_name] = module
        spec_.loader.exec_module(module)
    except Exception as e:  # the user's module: any error it raises is theirs to fix
        raise UserError(f"reward file {path} failed to load: {type(e).__name__}: {e}", where=where) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"{path}: {name!r} is not a function", where=f"{where}.function")
    check_signature(fn, f"{path}:{name}", f"{where}.function", tuple(args))

    def call(**kwargs):
        try:
            values = fn(**kwargs, **args)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"reward {path}:{name} raised {type(e).__name__}: {e}", where=where) from e
        if not isinstance(values, (list, tuple)):
            raise UserError(f"reward {path}:{name} returned {type(values).__name__}, not a list of floats "
                            "(one per completion)", where=where)
        return list(values)
    return call


def check_signature(fn, label: str, where: str, extra=()) -> None:
    """TRL calls a reward with keywords only: it must take `completions` (by name or through
    **kwargs) and **kwargs (the dataset's columns and TRL's state), and need no other argument."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return  # a builtin without a signature: its first call shows
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        raise UserError(f"reward {label} must accept **kwargs (TRL passes prompts, completions, completion_ids "
                        f"and the dataset's columns by keyword)", where=where,
                        hint="def reward(completions, **kwargs) -> list[float]")
    given = set(TRL_PASSES) | set(COLUMNS) | set(extra)
    for p in params:
        if p.kind is p.POSITIONAL_ONLY or (p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD
                                           and p.name not in given) or (p.kind is p.KEYWORD_ONLY
                                                                        and p.default is p.empty and p.name not in given):
            raise UserError(f"reward {label} needs an argument {p.name!r} that is never passed (it receives "
                            f"{', '.join(TRL_PASSES[:3] + COLUMNS)} and its args:)", where=where,
                            hint="def reward(completions, **kwargs) -> list[float]")


def reward_model(folder, where: str):
    """A sequence classifier's score of prompt + completion (a stage-rm run: a full model or a LoRA
    adapter with its score head, and its tokenizer)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
            from peft import PeftModel

            base = AutoModelForSequenceClassification.from_pretrained(**adapter_base(folder), num_labels=1)
            # the adapter carries the trained score head (modules_to_save)
            model = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
        else:
            model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise UserError(f"reward model {folder} cannot be loaded as a sequence classifier: {e}",
                        where=f"{where}.reward_model", hint="point it at a finished `stage: rm` run directory") from None
    from accelerate import PartialState

    device = PartialState().device
    model.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id

    def score(prompts, completions, **kwargs):
        texts = [p + c for p, c in zip(prompts, completions)]
        batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
        with torch.inference_mode():
            return model(**batch.to(device)).logits[:, 0].float().tolist()
    return score


def adapter_base(folder) -> dict:
    """from_pretrained arguments of the base an adapter folder was trained on: a runner run's
    plan.json names it as runner loaded it (a GGUF file, a revision), else adapter_config.json."""
    import json

    plan = folder / "plan.json"
    if plan.is_file():
        model = json.loads(plan.read_text()).get("model") or {}
        if model.get("path"):
            out = {"pretrained_model_name_or_path": model["path"]}  # never remote code: not this config's model
            out.update({k: model[k] for k in ("gguf_file", "revision") if model.get(k)})
            return out
    peft_config = json.loads((folder / "adapter_config.json").read_text())
    revision = peft_config.get("revision")  # PEFT's file, not a runner config key
    return {"pretrained_model_name_or_path": peft_config["base_model_name_or_path"],
            **({"revision": revision} if revision else {})}
