"""GRPO's `training.grpo.rewards`, checked without running anything: built-in names, a user function
as "file.py:function" (the file parsed, never imported, so `runner lint` runs no user code), and a
reward model's folder. Pure: imports no ML library. The functions themselves are built at train
time (runner.train.rewards)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from runner.errors import UserError

# Built-in rewards: name -> the arguments it takes (`args:`), the required ones marked True.
BUILTINS = {
    "accuracy": {},
    "think_format": {},
    "soft_overlong": {"cache": False},
    "exact_match": {"ignore_case": False},
    "format": {"pattern": True},
}

# What a reward-model folder holds: a model config and its weights, or a PEFT adapter on a base.
MODEL_MARKERS = ("config.json", "adapter_config.json")


def user_function(spec: str) -> tuple[str, str] | None:
    """("path/to/file.py", "fn") for a user reward, None for a built-in name."""
    if spec in BUILTINS:
        return None
    path, sep, name = spec.rpartition(":")
    if not sep or not path:
        return None
    return path, name


def resolve_path(path: str, config_dir: str | os.PathLike) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else Path(config_dir) / p


def reward_name(reward) -> str:
    """The reward's name in the metrics: its `name`, the function's name, or reward_model."""
    get = reward.get if isinstance(reward, dict) else lambda k: getattr(reward, k)
    if get("name"):
        return get("name")
    if get("reward_model"):
        return "reward_model"
    spec = get("function")
    found = user_function(spec)
    return found[1] if found else spec


def check_rewards(rewards: list, stage: str, config_dir: Path, where) -> list[UserError]:
    """Errors in `training.grpo.rewards` (each naming its key path); none for another stage."""
    errors: list[UserError] = []
    if stage != "grpo":
        return errors

    def error(path, message, hint=None):
        errors.append(UserError(f"{'.'.join(map(str, path))}: {message}", where=where(path), hint=hint))

    base = ("training", "grpo", "rewards")
    if not rewards:
        error(base, "stage grpo needs at least one reward",
              "e.g. rewards: [{function: accuracy}, {function: format, args: {pattern: '^<think>'}}]")
    names = {}
    for i, reward in enumerate(rewards):
        at = base + (i,)
        function, model = reward["function"], reward["reward_model"]
        if (function is None) == (model is None):
            error(at, "give exactly one of function and reward_model")
            continue
        name = reward_name(reward)
        if name in names:
            error(at + ("name",), f"two rewards are named {name!r} (also rewards[{names[name]}]); their metrics "
                  "would mix", "give one of them a name:")
        names.setdefault(name, i)
        if model is not None:
            folder = resolve_path(model, config_dir)
            if not folder.is_dir() or not any((folder / m).is_file() for m in MODEL_MARKERS):
                error(at + ("reward_model",), f"{folder} is not a reward model folder (no "
                      f"{' or '.join(MODEL_MARKERS)})", "point it at a finished `stage: rm` run directory")
            elif reward["args"]:
                error(at + ("args",), "a reward model takes no args")
            continue
        user = user_function(function)
        if user is None:
            if function not in BUILTINS:
                error(at + ("function",), f"unknown reward {function!r}",
                      f"a built-in ({', '.join(BUILTINS)}) or \"path/to/file.py:function\"")
                continue
            known = BUILTINS[function]
            for key in reward["args"]:
                if key not in known:
                    error(at + ("args", key), f"reward {function} takes no argument {key!r}"
                          + (f" (it takes: {', '.join(known)})" if known else ""))
            for key, required in known.items():
                if required and key not in reward["args"]:
                    error(at + ("args",), f"reward {function} needs args.{key}")
            continue
        problem = check_user_function(resolve_path(user[0], config_dir), user[1])
        if problem:
            error(at + ("function",), problem, "the file is relative to the config; the function a top-level "
                  "`def NAME(completions, **kwargs)`")
    return errors


def check_user_function(path: Path, name: str) -> str | None:
    """Why `path` has no top-level function `name` (parsed, not imported), or None."""
    if path.suffix != ".py":
        return f"{path} is not a Python file (.py)"
    if not path.is_file():
        return f"reward file not found: {path}"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as e:
        line = getattr(e, "lineno", None)
        return f"{path}{f':{line}' if line else ''} cannot be parsed: {getattr(e, 'msg', e)}"
    defined = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):  # reward = make_reward(...)
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.ImportFrom, ast.Import)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    if name not in defined:
        return f"{path} defines no function {name!r}"
    return None


def reward_digests(rewards: list, config_dir: Path, cache) -> list:
    """Each reward's files by content (a user function's file, a reward model's weights and configs),
    for config_hash: editing the reward changes the run, moving it does not."""
    from runner.plan import hashing

    out = []
    for reward in rewards:
        files: list[Path] = []
        if reward["reward_model"] is not None:
            folder = resolve_path(reward["reward_model"], config_dir)
            if folder.is_dir():
                files = sorted(p for p in folder.iterdir() if p.is_file() and (
                    p.suffix in hashing.MODEL_FILE_SUFFIXES or p.name in ("config.json", "adapter_config.json")))
        elif user_function(reward["function"]) is not None:
            path = resolve_path(user_function(reward["function"])[0], config_dir)
            files = [path] if path.is_file() else []
        out.append(hashing.tree_digest(files, cache) if files else None)
    return out
