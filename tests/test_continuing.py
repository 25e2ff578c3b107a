"""Continuing: adapter.init_from (an existing PEFT adapter trains on), model.path at a Trainer
checkpoint or a folder holding only an adapter, and the starting weights' bytes in the hashes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared" / "data"


def quickstart_config(tmp_path: Path, init_from: Path, **training) -> Path:
    cfg = yaml.safe_load((REPO / "cookbook" / "quickstart.yaml").read_text())
    cfg["datasets"][0]["path"] = str((SHARED / "identity.json").resolve())
    cfg["eval_datasets"] = [{**cfg["datasets"][0], "max_samples": 4}]
    cfg["adapter"] = {"kind": "lora", "init_from": str(init_from)}
    cfg["training"].update({"max_steps": 1, "micro_batch_size": 1, "learning_rate": 1e-4, **training})
    cfg["data"] = {"cache_dir": str(tmp_path / "cache")}
    cfg["output"] = {"dir": str(tmp_path / "continued")}
    path = tmp_path / "continue.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def mean_loss(model, rows, collate, batch: int = 2) -> float:
    """The Trainer's eval_loss: each batch's mean loss, weighted by the batch's rows."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            part = rows[start:start + batch]
            total += model(**collate(part)).loss.item() * len(part)
            count += len(part)
    model.train(was_training)
    return total / count


def test_init_from_continues_the_quickstart_adapter(tmp_path, quickstart_run):
    import torch
    from peft import PeftModel
    from transformers import TrainerCallback

    from runner.data import build_datasets, load_tokenizer, make_collator
    from runner.plan.resolve import make_plan
    from runner.ship.merge import load_base_for_adapter, load_run_plan
    from runner.train.recipe import train

    torch.set_num_threads(2)
    plan = make_plan(quickstart_config(tmp_path, quickstart_run), [])
    assert plan.adapter.init_from == str(quickstart_run.resolve())
    tokenizer = load_tokenizer(plan)
    rows = [dict(r) for r in build_datasets(plan, tokenizer, progress=False).eval]
    collate = make_collator(plan, tokenizer)

    # The original run's adapter on its base, loaded by PEFT alone: its eval loss on these rows.
    original = load_run_plan(quickstart_run)
    base = load_base_for_adapter(original, quickstart_run, tokenizer, "float32")
    base.config.use_cache = False  # as in training: packed rows' position_ids mark their samples
    expected = mean_loss(PeftModel.from_pretrained(base, quickstart_run), rows, collate)
    del base

    seen = {}

    class BeforeFirstStep(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["loss"] = mean_loss(model, rows, collate)
            seen["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)

    run = train(plan, callbacks=[BeforeFirstStep()])
    print("eval loss before the first step", seen, "original", expected)
    assert math.isclose(seen["loss"], expected, rel_tol=1e-4), (seen, expected)
    assert seen["trainable"] > 0
    # Well below a fresh adapter's: the identity was learned and kept (the base answers as SmolLM).
    assert expected < 1.0
    stored = json.loads((run / "adapter_config.json").read_text())
    source = json.loads((quickstart_run / "adapter_config.json").read_text())
    assert (stored["r"], stored["lora_alpha"]) == (source["r"], source["lora_alpha"])
    assert json.loads((run / "RUN_COMPLETE").read_text())["steps"] == 1


def test_init_from_bytes_join_config_hash(tmp_path, quickstart_run):
    from runner.plan.resolve import make_plan

    copy = tmp_path / "adapter"
    copy.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(quickstart_run / name, copy / name)
    first = make_plan(quickstart_config(tmp_path, copy), [])
    moved = tmp_path / "elsewhere"
    shutil.copytree(copy, moved)
    assert make_plan(quickstart_config(tmp_path, moved), []).hashes.config == first.hashes.config  # bytes, not path
    data = bytearray((copy / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "adapter_model.safetensors").write_bytes(bytes(data))
    assert make_plan(quickstart_config(tmp_path, copy), []).hashes.config != first.hashes.config
    plain = yaml.safe_load(quickstart_config(tmp_path, copy).read_text())
    plain["adapter"] = {"kind": "lora"}
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(plain))
    assert make_plan(tmp_path / "plain.yaml", []).hashes.config != first.hashes.config


@pytest.mark.parametrize("case, needle", [
    ("missing", "no folder"),
    ("model", "holds a full model"),
    ("not_lora", "describes a PREFIX_TUNING adapter"),
    ("no_weights", "no adapter weights"),
])
def test_init_from_refuses_what_is_not_a_lora_adapter(tmp_path, quickstart_run, case, needle):
    from runner.errors import UserError
    from runner.plan.resolve import make_plan

    folder = tmp_path / "thing"
    if case != "missing":
        folder.mkdir()
    if case == "model":
        (folder / "config.json").write_text("{}")
    if case == "not_lora":
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    if case == "no_weights":
        shutil.copy(quickstart_run / "adapter_config.json", folder)
    with pytest.raises(UserError) as e:
        make_plan(quickstart_config(tmp_path, folder), [])
    assert needle in str(e.value) and "adapter.init_from" in str(e.value)


def test_init_from_with_full_kind_and_shape_keys(tmp_path, quickstart_run):
    from runner.errors import ConfigErrors
    from runner.plan.resolve import make_plan

    path = quickstart_config(tmp_path, quickstart_run)
    cfg = yaml.safe_load(path.read_text())
    cfg["adapter"].update(r=64, alpha=8)
    path.write_text(yaml.safe_dump(cfg))
    plan = make_plan(path, [])
    assert any("adapter.r" in w and "ignored" in w for w in plan.warnings)
    with pytest.raises(ConfigErrors) as e:
        make_plan(path, ["adapter.kind=full"])
    assert "adapter.init_from" in str(e.value)


def test_model_path_at_a_trainer_checkpoint_and_at_an_adapter(tmp_path, quickstart_run):
    """A full model's Trainer checkpoint trains on (its optimizer state stays out of the model's
    fingerprint); a folder holding only an adapter is refused with where it goes."""
    from tiny_model import save_tiny_model, write_config

    from runner.errors import ConfigErrors
    from runner.plan.resolve import make_plan

    ckpt = save_tiny_model(tmp_path / "checkpoint-40")
    from tiny_tokenizer import save_tiny_tokenizer

    save_tiny_tokenizer(ckpt)
    cfg = write_config(tmp_path / "a", ckpt, adapter={"kind": "full"})
    before = make_plan(cfg, [])
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        (ckpt / name).write_bytes(b"state " + name.encode())
    (ckpt / "trainer_state.json").write_text("{}")
    after = make_plan(cfg, [])
    assert after.hashes.model == before.hashes.model  # the weights, not the optimizer's state
    weights = next(ckpt.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert make_plan(cfg, []).hashes.model != before.hashes.model

    with pytest.raises(ConfigErrors) as e:
        make_plan(write_config(tmp_path / "b", quickstart_run), [])
    assert "holds a LoRA adapter" in str(e.value) and "adapter.init_from" in str(e.value)
