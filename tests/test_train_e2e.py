"""End to end on a tiny random Llama: every stage and every adapter kind trains on a memorisable
slice of the shared data (loss finite and falling), writes a complete run directory, and the
saved result reloads (as users load it) to the very model that finished training."""

import json

import pytest
import torch

from runner import rundir
from runner.plan.resolve import make_plan
from runner.train.command import run
from tests.tiny_model import logits_probe, poison_from, reload_logits, save_tiny_model, train_losses, write_config

torch.set_num_threads(1)
STEPS = 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden=48)


def train(tmp_path, model_dir, callbacks=(), **kw):
    training = {"max_steps": STEPS, "micro_batch_size": 8, "learning_rate": 1e-2, **kw.pop("training", {})}
    plan = make_plan(write_config(tmp_path, model_dir, training=training, **kw))
    probe = logits_probe()
    run_dir = run(plan, callbacks=[probe, *callbacks])
    return run_dir, probe


def assert_learned(run_dir):
    losses = train_losses(run_dir)
    assert len(losses) == STEPS
    assert all(l == l and abs(l) != float("inf") for l in losses), losses
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first * 0.8, f"loss did not fall: {losses}"


def assert_complete(run_dir, *, adapter: bool):
    names = {p.name for p in run_dir.iterdir()}
    for required in ("plan.json", "config.yaml", "README.md", "metrics.jsonl", "loss.png", "RUN_COMPLETE",
                     "tokenizer.json", "chat_template.jinja"):
        assert required in names, f"{required} missing from {sorted(names)}"
    if adapter:
        assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    else:
        assert "config.json" in names and any(n.startswith("model") and n.endswith(".safetensors") for n in names)
    plan = json.loads((run_dir / "plan.json").read_text())
    runtime = plan["runtime"]
    assert runtime["world_size"] == 1 and runtime["device"] == "cpu" and runtime["dtype"] == "float32"
    launch = plan["launch"]
    assert launch["versions"]["torch"] and launch["versions"]["trl"]
    assert launch["trainable_params"] > 0
    card = (run_dir / "README.md").read_text()
    assert plan["hashes"]["config"] in card and plan["hashes"]["data"] in card
    assert "stage:" in (run_dir / "config.yaml").read_text()
    assert "training_args.bin" not in names
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p not in rundir.complete_checkpoints(run_dir)]


@pytest.mark.parametrize("stage", ["sft", "pt", "dpo", "kto", "orpo", "simpo", "cpo"])
def test_each_stage_trains_saves_and_reloads(tmp_path, model_dir, stage):
    # Short pretraining rows: a memorisable amount of text for a 48-wide model.
    # Long texts are memorised slowly by a LoRA on a random 48-wide model: take short slices there.
    small = {"sequence": {"max_length": 32}, "dataset": {"num_samples": 4}} if stage in ("pt", "orpo", "simpo", "cpo") else {}
    run_dir, probe = train(tmp_path, model_dir, stage=stage, training={"learning_rate": 2e-2}, **small)
    assert_learned(run_dir)
    assert_complete(run_dir, adapter=True)
    assert json.loads((run_dir / "plan.json").read_text())["runtime"]["target_modules"] == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    torch.testing.assert_close(reload_logits(run_dir, model_dir), probe.logits, rtol=1e-4, atol=1e-4)


ADAPTERS = {
    "lora": ({"kind": "lora"}, True),
    "dora": ({"kind": "lora", "dora": True}, True),
    "rslora": ({"kind": "lora", "rslora": True}, True),
    "pissa": ({"kind": "lora", "init": "pissa"}, True),
    "loraplus": ({"kind": "lora", "loraplus_lr_ratio": 8}, True),
    "modules_to_save": ({"kind": "lora", "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]}, True),
    "full": ({"kind": "full"}, False),
    "freeze": ({"kind": "freeze", "trainable_layers": 1, "trainable_modules": ["lm_head"]}, False),
}


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_each_adapter_kind_trains_saves_and_reloads(tmp_path, model_dir, name):
    adapter, is_adapter = ADAPTERS[name]
    lr = 3e-3 if name == "full" else 2e-2
    run_dir, probe = train(tmp_path, model_dir, adapter=adapter, training={"learning_rate": lr},
                           dataset={"num_samples": 4})
    assert_learned(run_dir)
    assert_complete(run_dir, adapter=is_adapter)
    # The saved result is the trained model: for PiSSA this holds only because the adapter was
    # converted to apply to the original base.
    torch.testing.assert_close(reload_logits(run_dir, model_dir), probe.logits, rtol=1e-4, atol=1e-4)
    if name == "loraplus":
        rates = {g["name"]: g["lr"] for g in probe.optimizer.param_groups}
        assert rates["loraplus_B"] == pytest.approx(8 * rates["loraplus_A"])
    if name == "pissa":
        config = json.loads((run_dir / "adapter_config.json").read_text())
        assert config["r"] == 16 and config["init_lora_weights"] is True  # converted: rank 2r, plain LoRA
        assert not (run_dir / "pissa_init").exists()
    if name == "freeze":
        assert json.loads((run_dir / "plan.json").read_text())["runtime"]["target_modules"] == ["model.layers.1", "lm_head"]


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_validation_loss_at_the_configured_cadence(tmp_path, model_dir, stage):
    run_dir, _ = train(tmp_path, model_dir, stage=stage, training={"max_steps": 6, "eval_every": 2},
                       dataset={"num_samples": 10}, extra={"val_size": 2})
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("kind") == "eval"]
    # every 2 steps, plus the final evaluation after training
    assert [r["step"] for r in evals] == [2, 4, 6, 6]
    assert all(r["eval_loss"] == r["eval_loss"] for r in evals)
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["launch"]["train_rows"] == 8 and plan["launch"]["eval_rows"] == 2
    assert "final eval loss: " + str(float(f"{evals[-1]['eval_loss']:.4g}")) in (run_dir / "README.md").read_text()


@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_preference_stages_with_full_fine_tuning_use_a_frozen_reference_copy(tmp_path, model_dir, stage):
    run_dir, probe = train(tmp_path, model_dir, stage=stage, adapter={"kind": "full"},
                           training={"max_steps": 8, "learning_rate": 3e-3})
    losses = train_losses(run_dir)
    assert losses[-1] < losses[0]
    assert_complete(run_dir, adapter=False)
    torch.testing.assert_close(reload_logits(run_dir, model_dir), probe.logits, rtol=1e-4, atol=1e-4)


def test_non_finite_loss_stops_the_run_or_is_skipped_up_to_max_nonfinite(tmp_path, model_dir):
    from runner.errors import UserError

    blow_up = {"kind": "full"}
    plain = {"optimizer": "adamw_torch"}  # the per-micro-step check (fused AdamW: tests/test_nonfinite.py)
    with pytest.raises(UserError, match=r"non-finite loss at step \d \(1 so far; training.max_nonfinite is 0\)"):
        train(tmp_path / "a", model_dir, adapter=blow_up, training={"max_steps": 4, **plain},
              callbacks=[poison_from(2)])
    run_dir, _ = train(tmp_path / "b", model_dir, adapter=blow_up, training={"max_steps": 4, "max_nonfinite": 3, **plain},
                       callbacks=[poison_from(2)])
    assert (run_dir / "RUN_COMPLETE").is_file()
