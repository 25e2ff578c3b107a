"""Models that ship their own Python code. Loading one runs that code, which runner does only when
the config says `model.trust_remote_code: true`; it never turns the setting on by itself. Without it
transformers stops at load with a traceback; here the plan already says which key to set and what it
means, from config.json alone (no import of transformers), and load errors that slip through (a
custom tokenizer class, a hub model not cached yet) are turned into the same message."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from importlib import metadata
from pathlib import Path

from runner.errors import UserError

KEY = "model.trust_remote_code"
MEANING = (f"{KEY}: true lets transformers import and run the Python files of the model folder (or hub repo) "
           "with your permissions, on every machine of the run")


@functools.lru_cache(maxsize=None)
def native_model_types() -> frozenset:
    """The model_type values the installed transformers builds in, read from its source text (importing
    it would pull in torch). Empty when transformers is missing or its layout is not recognised: the
    plan then leaves the decision to load time. tests/test_remote_code.py pins this to the real mapping."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    auto = Path(list(spec.submodule_search_locations)[0]) / "models" / "auto"
    found: set = set()
    for name in ("auto_mappings.py", "configuration_auto.py"):
        try:
            text = (auto / name).read_text(encoding="utf-8")
        except OSError:
            continue
        found.update(re.findall(r'\(\s*"([\w.-]+)"\s*,\s*"\w+Config"\s*\)', text))
        found.update(re.findall(r'"([\w.-]+)"\s*:\s*"\w+Config"', text))
    return frozenset(found) if len(found) > 50 else frozenset()


def _transformers_version() -> str:
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def check_model_dir(directory: Path | None, trust_remote_code: bool, where: str,
                    key: str = "model.path") -> UserError | None:
    """The error for a model folder whose config.json needs code of its own that the config does not
    allow; None when it loads without (or may: no config.json, an unreadable one, an unknown mapping)."""
    if directory is None or trust_remote_code:
        return None
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # GGUF folders have none; a broken file is transformers' to report at load
    if not isinstance(config, dict):
        return None
    native = native_model_types()
    model_type = config.get("model_type")
    auto_map = config.get("auto_map")
    if not native or (isinstance(model_type, str) and model_type in native):
        return None  # built in: transformers loads its own class and ignores auto_map without the flag
    if isinstance(auto_map, dict) and auto_map:
        classes = ", ".join(f"{k} -> {v}" for k, v in list(auto_map.items())[:3])
        return custom_code_error(directory, where, f"the auto_map of its config.json points to code of its own ({classes}) "
                                 f"and its model_type {model_type!r} is not built into transformers "
                                 f"{_transformers_version()}", key)
    if isinstance(model_type, str):
        return UserError(
            f"{key}: the model_type {model_type!r} of {directory} is not known to transformers "
            f"{_transformers_version()}, and the folder ships no code of its own (no auto_map in config.json)",
            where=where, hint=f"upgrade transformers to a version that has {model_type}, or check the folder; "
                              f"{KEY} would not help (there is no code to run)")
    return None


def custom_code_error(source, where: str, why: str, key: str = "model.path") -> UserError:
    return UserError(
        f"{key}: {source} needs its own Python code to load: {why}; {KEY} is false",
        where=where,
        hint=f"{MEANING}. Read its .py files first; if you trust them, set {KEY}: true (and pin model.revision "
             "for a hub model). runner never turns it on by itself")


def load_error(source: str, exc: Exception, key: str = "model.path") -> UserError | None:
    """transformers' refusal to run a model's code (raised at load) as the same error; None for others."""
    text = str(exc)
    if "trust_remote_code" in text and ("custom code" in text or "execute" in text):
        return custom_code_error(source, key, "transformers refused to run the code it ships "
                                 f"({text.strip().splitlines()[0][:200]})", key)
    if "does not recognize this architecture" in text:
        return UserError(f"{key}: {source} has a model type that transformers {_transformers_version()} "
                         f"does not know ({text.strip().splitlines()[0][:200]})", where=key,
                         hint=f"upgrade transformers; if the model ships its own code (auto_map in config.json), "
                              f"{MEANING}")
    return None
