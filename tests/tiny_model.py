"""Tiny random Llama / Qwen2 models built in-process and saved as Hugging Face directories (with the
tiny tokenizer of tests/tiny_tokenizer.py), plus a helper that writes a runner config around them.
Everything trains in seconds on one CPU thread."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.tiny_tokenizer import save_tiny_tokenizer, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_config(arch: str = "llama", vocab_size: int = 700, hidden: int = 32, layers: int = 2, **extra):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        use_cache=True,
        # With the usual 0.02 a frozen random head caps the logit range near 1: an adapter could
        # never lower the loss much. 0.2 gives tiny models room to learn.
        initializer_range=0.2,
        **extra,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(f"unknown tiny arch {arch!r}")


def save_tiny_model(directory, arch: str = "llama", seed: int = 0, dtype: str = "float32", **config) -> Path:
    """A random model and the tiny tokenizer in `directory`; returns the directory."""
    import torch
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    tokenizer = tiny_tokenizer()
    cfg = tiny_config(arch, vocab_size=len(tokenizer), **config)
    cfg.pad_token_id = tokenizer.pad_token_id
    cfg.eos_token_id = tokenizer.eos_token_id
    cfg.bos_token_id = tokenizer.bos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    save_tiny_tokenizer(directory)
    return directory


# Memorisable subsets of the shared data, per stage: (file, format, rows).
STAGE_DATA = {
    "sft": ("identity.json", "alpaca", 8),
    "pt": ("c4_demo.jsonl", "text", 8),
    "dpo": ("dpo_en_demo.json", "preference", 8),
    "orpo": ("dpo_en_demo.json", "preference", 8),
    "kto": ("kto_en_demo.json", "kto", 8),
    "grpo": ("identity.json", "alpaca", 8),
    "rm": ("dpo_en_demo.json", "preference", 8),
    "simpo": ("dpo_en_demo.json", "preference", 8),
    "cpo": ("dpo_en_demo.json", "preference", 8),
}


def write_config(
    directory,
    model_dir,
    *,
    stage: str = "sft",
    adapter: dict | None = None,
    training: dict | None = None,
    sequence: dict | None = None,
    dataset: dict | None = None,
    extra: dict | None = None,
    name: str = "tiny",
) -> Path:
    """A runner YAML in `directory` that trains the tiny model on a small slice of the shared data."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    file, fmt, rows = STAGE_DATA[stage]
    ds = {"path": str(SHARED_DATA / file), "format": fmt, "num_samples": rows}
    if file == "identity.json":
        ds["substitute"] = {"name": "Nova", "author": "Acme Labs"}
    ds.update(dataset or {})
    cfg = {
        "name": name,
        "model": {"path": str(model_dir), "dtype": "float32"},
        "adapter": {"kind": "lora", "r": 8, "dropout": 0.0, **(adapter or {})},
        "datasets": [ds],
        "template": {"name": "tokenizer"},
        # Short slices of long rows on purpose: every sample may lose its end-of-turn token.
        "sequence": {"max_length": 128, "allow_all_truncated": True, **(sequence or {})},
        "data": {"cache_dir": str(directory / "cache")},
        "training": {
            "stage": stage,
            "max_steps": 20,
            "micro_batch_size": 4,
            "gradient_accumulation": 1,
            "learning_rate": 5e-3,
            "lr_scheduler": "constant",
            "warmup_ratio": 0.0,
            "precision": "fp32",
            **(training or {}),
        },
        "tracking": {"log_every": 1, "progress_bar": False},
        "output": {"dir": str(directory / "run")},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def probe_ids():
    """A fixed input for comparing a trained model in memory with its saved and reloaded self."""
    import torch

    tok = tiny_tokenizer()
    text = "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\nI am Nova"
    return torch.tensor([tok(text)["input_ids"]])


def logits_of(model, ids):
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids.to(model.device)).logits.float().cpu()
    model.train(was_training)
    return out


def logits_probe():
    """A TrainerCallback keeping the trained model's logits on probe_ids() at the end of training,
    and the optimizer it trained with."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        logits = None
        optimizer = None
        model = None

        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            self.optimizer = optimizer

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.model = model
            self.logits = logits_of(model, probe_ids())

    return Probe()


def reload_logits(run_dir, model_dir):
    """Logits of the saved run reloaded the way users load it: base + PeftModel, or the full model."""
    from transformers import AutoModelForCausalLM

    run_dir = Path(run_dir)
    if (run_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(run_dir)
    return logits_of(model, probe_ids())


def train_losses(run_dir) -> list[float]:
    import json

    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("kind") == "train"]


def poison_from(step: int):
    """A TrainerCallback that makes the weights non-finite from optimizer step `step` on: the way to a
    non-finite loss now that a learning rate large enough to overflow is refused by the config."""
    import torch
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step + 1 == step:
                with torch.no_grad():
                    model.get_input_embeddings().weight.fill_(float("inf"))

    return Poison()


def save_poisoned_model(directory) -> Path:
    """The tiny model with non-finite embeddings: every loss it gives is non-finite."""
    import torch
    from transformers import AutoModelForCausalLM

    directory = save_tiny_model(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("inf"))
    model.save_pretrained(directory)
    return directory
