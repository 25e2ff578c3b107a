"""Long context (model.rope_scaling, model.max_position) and the memory-saving optimizers (GaLore,
APOLLO, Muon): plan-time refusals through the real CLI, real training of tiny Llamas, and the
non-finite guard over optimizers without a fused found_inf step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from runner.errors import ConfigErrors
from runner.plan.resolve import make_plan
from runner.train.command import run
from tests.tiny_model import REPO, save_tiny_model, train_losses, write_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "runner", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO, timeout=120)


def _full(tmp_path, model, name, training=None, model_extra=None, steps=12):
    cfg = write_config(tmp_path / name, model, adapter={"kind": "full"}, name=name,
                       training={"max_steps": steps, "learning_rate": 2e-3, **(training or {})})
    if model_extra:
        data = yaml.safe_load(cfg.read_text())
        data["model"].update(model_extra)
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


def _falls(losses):
    k = max(2, len(losses) // 4)
    return sum(losses[-k:]) / k < 0.9 * sum(losses[:k]) / k


# --- long context --------------------------------------------------------------------------------

def test_yarn_writes_rope_parameters_and_trains(tmp_path, tiny):
    cfg = _full(tmp_path, tiny, "yarn", model_extra={"rope_scaling": {"type": "yarn", "factor": 4}})
    plan = make_plan(cfg)
    assert plan.model.max_position == 2048  # the model's 512 positions x 4
    run(make_plan(cfg))
    saved = json.loads((tmp_path / "yarn" / "run" / "config.json").read_text())
    assert saved["rope_parameters"] == {"rope_theta": 10000.0, "rope_type": "yarn", "factor": 4.0,
                                        "original_max_position_embeddings": 512}
    assert saved["max_position_embeddings"] == 2048
    assert _falls(train_losses(tmp_path / "yarn" / "run"))
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "yarn" / "run")
    assert reloaded.model.rotary_emb.rope_type == "yarn"


def test_a_model_without_rope_is_refused_at_plan_time(tmp_path, tiny):
    # GPT-2 learns absolute positions: nothing for rope_scaling to stretch.
    from transformers import GPT2Config

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=700).save_pretrained(gpt2)
    for f in tiny.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            (gpt2 / f.name).write_bytes(f.read_bytes())
    cfg = _full(tmp_path, gpt2, "gpt2", model_extra={"rope_scaling": {"type": "linear", "factor": 2}})
    out = _cli("plan", str(cfg))
    assert out.returncode == 2, out.stderr
    assert "model.rope_scaling" in out.stderr and "no rotary position embeddings" in out.stderr
    assert "Traceback" not in out.stderr


def test_longrope_factors_of_the_wrong_length_are_refused_at_plan_time(tmp_path, tiny):
    # The tiny Llama's head dimension is 8: longrope needs 4 factors per list.
    cfg = _full(tmp_path, tiny, "longrope", model_extra={
        "rope_scaling": {"type": "longrope", "factor": 2, "short_factor": [1.0] * 3, "long_factor": [2.0] * 4}})
    out = _cli("plan", str(cfg))
    assert out.returncode == 2, out.stderr
    assert "model.rope_scaling.short_factor: short_factor has 3 numbers" in out.stderr and "needs 4" in out.stderr
    good = _full(tmp_path, tiny, "longrope_ok", model_extra={
        "rope_scaling": {"type": "longrope", "factor": 2, "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}})
    assert make_plan(good).model.max_position == 1024


def test_a_scaling_type_without_its_parameters_is_refused(tmp_path, tiny):
    cfg = _full(tmp_path, tiny, "llama3", model_extra={"rope_scaling": {"type": "llama3", "factor": 8}})
    with pytest.raises(ConfigErrors, match="low_freq_factor"):
        make_plan(cfg)


def test_a_model_whose_code_ignores_rope_parameters_is_refused_before_load(tmp_path):
    # GPT-J's rotary embedding is its own code: transformers' rope_parameters would be ignored.
    from runner.errors import UserError
    from runner.train.model import check_rope
    from transformers import AutoModelForCausalLM, GPTJConfig

    cfg = GPTJConfig(n_layer=1, n_embd=32, n_head=4, rotary_dim=8, vocab_size=64)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)

    class Plan:  # check_rope reads only plan.model.rope_scaling
        class model:
            rope_scaling = {"type": "yarn", "factor": 2}

    with pytest.raises(UserError, match="does not use transformers' RoPE scaling"):
        check_rope(Plan, model)


# --- optimizers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer,extra", [
    ("galore_adamw", {"low_rank": {"rank": 4, "update_proj_gap": 5}}),
    ("apollo_adamw", {"low_rank": {"rank": 4, "update_proj_gap": 5}}),
    ("galore_adamw_layerwise", {"low_rank": {"rank": 4, "update_proj_gap": 5}}),  # stepped during backward
    ("muon", {}),
])
def test_memory_saving_optimizers_train_with_falling_loss(tmp_path, tiny, optimizer, extra):
    cfg = _full(tmp_path, tiny, optimizer, training={"optimizer": optimizer, "learning_rate": 5e-3, **extra}, steps=15)
    run(make_plan(cfg))
    losses = train_losses(tmp_path / optimizer / "run")
    assert len(losses) == 15 and all(l == l for l in losses)
    assert _falls(losses), losses
    plan = json.loads((tmp_path / optimizer / "run" / "plan.json").read_text())
    modules = plan["runtime"]["optimizer_modules"]
    assert modules == (["model.layers"] if optimizer == "muon" else
                       ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"])


@pytest.mark.parametrize("training,message", [
    ({"optimizer": "galore_adamw_layerwise", "gradient_accumulation": 2}, "cannot accumulate gradients"),
    ({"optimizer": "apollo_adamw_layerwise", "max_nonfinite": 3}, "before a non-finite step could be skipped"),
    ({"optimizer": "galore_adamw"}, "is for full fine-tuning"),
])
def test_optimizer_refusals_at_plan_time(tmp_path, tiny, training, message):
    cfg = write_config(tmp_path, tiny, training=training,
                       adapter=None if "layerwise" not in training["optimizer"] else {"kind": "full"})
    out = _cli("plan", str(cfg))
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_layerwise_under_ddp_is_refused_at_plan_time(tmp_path, tiny):
    cfg = write_config(tmp_path, tiny, adapter={"kind": "full"}, training={"optimizer": "galore_adamw_layerwise"},
                       extra={"distributed": {"backend": "ddp", "num_processes": 2}})
    out = _cli("plan", str(cfg))
    assert out.returncode == 2 and "cannot run on several processes" in out.stderr, out.stderr


def test_guard_skips_a_nan_step_of_muon_with_adamw():
    from runner.train.nonfinite import NonFiniteGuard, supports
    from runner.train.optimizers import muon_class

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    opt = muon_class()([net[0].weight], [net[0].bias, *net[1].parameters()], lr=0.05, weight_decay=0.0,
                       betas=(0.9, 0.999), eps=1e-8, momentum=0.95, nesterov=True, ns_steps=5,
                       adjust_lr_fn="match_rms_adamw")
    assert not supports(opt)
    guard = NonFiniteGuard(opt, max_nonfinite=1)

    def step(x):
        opt.zero_grad(set_to_none=True)
        net(x).pow(2).sum().backward()
        opt.step()

    step(torch.ones(2, 4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    momentum = opt.muon.state[net[0].weight]["momentum_buffer"].clone()
    adam_steps = [int(s["step"]) for s in opt.adamw.state.values()]
    step(torch.tensor([[1.0, float("nan"), 0.0, 0.0]] * 2))  # NaN gradients everywhere
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(momentum, opt.muon.state[net[0].weight]["momentum_buffer"])
    assert [int(s["step"]) for s in opt.adamw.state.values()] == adam_steps
    step(torch.ones(2, 4))
    assert not torch.equal(before["0.weight"], net[0].weight)
    guard.check(global_step=3)  # one skip is allowed: a warning
    # the whole state round-trips (the Trainer's checkpoints)
    again = muon_class()([net[0].weight], [net[0].bias, *net[1].parameters()], lr=0.05, weight_decay=0.0,
                         betas=(0.9, 0.999), eps=1e-8, momentum=0.95, nesterov=True, ns_steps=5,
                         adjust_lr_fn="match_rms_adamw")
    again.load_state_dict(opt.state_dict())
    assert torch.equal(again.muon.state[net[0].weight]["momentum_buffer"],
                       opt.muon.state[net[0].weight]["momentum_buffer"])


def test_guard_skips_a_nan_step_of_galore():
    from galore_torch import GaLoreAdamW

    from runner.train.nonfinite import NonFiniteGuard

    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8)
    opt = GaLoreAdamW([{"params": [layer.bias]},
                       {"params": [layer.weight], "rank": 2, "update_proj_gap": 5, "scale": 0.25, "proj_type": "std"}],
                      lr=0.01)
    NonFiniteGuard(opt, max_nonfinite=1)
    layer(torch.ones(2, 8)).sum().backward()
    opt.step()
    before = layer.weight.detach().clone()
    opt.zero_grad(set_to_none=True)
    layer(torch.full((2, 8), float("inf"))).sum().backward()
    opt.step()
    assert torch.equal(before, layer.weight) and opt.state[layer.weight]["step"] == 1


@pytest.mark.parametrize("optimizer", ["muon", "galore_adamw"])
def test_non_finite_steps_are_skipped_and_counted_in_training(tmp_path, tiny, optimizer):
    # The guard's own message ("loss or gradients", the count): not the plain per-micro-step check.
    from runner.errors import UserError
    from tests.tiny_model import poison_from

    training = {"optimizer": optimizer, "max_steps": 4, "low_rank": {"rank": 4}}
    with pytest.raises(UserError, match=r"non-finite loss or gradients at step 2 \(1 so far; training.max_nonfinite is 0\)"):
        run(make_plan(_full(tmp_path, tiny, "stop", training=training)), callbacks=[poison_from(2)])
    done = run(make_plan(_full(tmp_path, tiny, "skip", training={**training, "max_nonfinite": 3})),
               callbacks=[poison_from(2)])
    assert (done / "RUN_COMPLETE").is_file()


def test_offload_check_script_runs_in_smoke(tmp_path):
    # On the CPU offloading has nothing to move: this runs bench/offload_check.py's code (the GPU run
    # compares gradients and peak memory with and without it).
    out = subprocess.run([sys.executable, str(REPO / "bench" / "offload_check.py"), "--smoke", "--out",
                          str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["same_within_rerun_spread"] and result["loss_on"] == result["loss_off"]
