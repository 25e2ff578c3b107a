"""Tiny random vision-language models for tests, built offline in-process: the families' real
configs and processor classes (runner/train/tiny_vlm.py) around the tiny BPE tokenizer of
tests/tiny_tokenizer.py, saved as a Hugging Face folder that AutoProcessor and
AutoModelForImageTextToText load like the real model."""

from __future__ import annotations

from pathlib import Path

from runner.train import tiny_vlm as tiny
from runner.train.tiny_vlm import FAMILIES, chat_template  # noqa: F401 (the tests' names)
from tests.tiny_tokenizer import tiny_tokenizer


def build(family: str):
    """(config, processor) of a tiny `family` model, with the tests' tiny tokenizer."""
    return tiny.build(family, tiny_tokenizer)


def save_tiny_vlm(directory, family: str = "qwen2_vl", seed: int = 0) -> Path:
    """A random tiny `family` model with its processor in `directory`; returns the directory."""
    return tiny.save(Path(directory), family, tiny_tokenizer, seed)


def write_vlm_config(directory, model_dir, *, dataset: str = "mllm_demo.json", name: str = "tiny-vlm",
                     training: dict | None = None, extra: dict | None = None) -> Path:
    """A runner YAML in `directory` that trains the tiny VLM on a shared multimodal demo file."""
    import yaml

    from tests.tiny_model import SHARED_DATA

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {
        "name": name,
        "model": {"path": str(model_dir), "dtype": "float32"},
        "adapter": {"kind": "lora", "r": 8, "dropout": 0.0},
        "datasets": [{"path": str(SHARED_DATA / dataset), "format": "openai"}],
        "template": {"name": "tokenizer"},
        "sequence": {"max_length": 512},
        "data": {"cache_dir": str(directory / "cache")},
        "training": {"stage": "sft", "max_steps": 12, "micro_batch_size": 2, "gradient_accumulation": 1,
                     "learning_rate": 1e-2, "lr_scheduler": "constant", "warmup_ratio": 0.0, "precision": "fp32",
                     **(training or {})},
        "tracking": {"log_every": 1, "progress_bar": False},
        "output": {"dir": str(directory / "run")},
    }
    for key, value in (extra or {}).items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
