"""training.torch_compile compiles each decoder layer on its own (runner.train.fast.compile): a real
CPU training run of the tiny Llama, full fine-tune and LoRA, against the same run eager; the layers are
compiled in place (the saved weights keep their names), the run is recorded as compiled_layers."""

from __future__ import annotations

import json

import pytest
import torch

from runner.cli import main
from runner.train.fast.compile import compile_layers

torch.set_num_threads(1)


def _train(tmp_path, name, adapter, compiled: bool, checkpointing: bool = False, fused: bool = False):
    from tests.tiny_model import save_tiny_model, write_config

    model_dir = tmp_path / "model"
    if not model_dir.exists():
        save_tiny_model(model_dir)
    cfg = write_config(tmp_path / name, model_dir, stage="pt", adapter=adapter,
                       sequence={"max_length": 64, "packing": True, "truncation": "split"},
                       training={"max_steps": 3, "micro_batch_size": 2, "torch_compile": compiled,
                                 "gradient_checkpointing": checkpointing, "fused_lora": fused})
    assert main(["train", str(cfg)]) == 0
    return tmp_path / name / "run"


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and "train_runtime" not in r]


@pytest.mark.parametrize("adapter, checkpointing, fused", [
    ({"kind": "full"}, False, False),
    ({"kind": "lora", "r": 8}, True, False),
    ({"kind": "lora", "r": 8}, False, True),   # runner's fused LoRA function inside the compiled graph
])
def test_compiled_layers_train_the_eager_losses(tmp_path, adapter, checkpointing, fused):
    eager = _train(tmp_path, "eager", adapter, False, checkpointing, fused)
    compiled = _train(tmp_path, "compiled", adapter, True, checkpointing, fused)
    plan = json.loads((compiled / "plan.json").read_text())
    layers = plan["runtime"]["fast_path"]["compiled_layers"]
    assert layers and layers.split("/")[0] == layers.split("/")[1] != "0"
    assert plan["runtime"]["fast_path"]["fused_lora"] is fused
    a, b = _losses(eager), _losses(compiled)
    assert len(a) == len(b) == 3
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-4, atol=1e-5)
    # Compiled in place: the saved weights carry the model's own names (no "_orig_mod.").
    weights = list(compiled.rglob("*.safetensors"))
    assert weights
    from safetensors import safe_open

    for path in weights:
        with safe_open(str(path), "pt") as f:
            assert not any("_orig_mod" in k for k in f.keys())


def test_compile_layers_compiles_each_decoder_layer_in_place():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2)).float()
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    ref = model(input_ids=ids, labels=ids).loss
    keys = list(model.state_dict())
    assert compile_layers(model) == 3
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)
    assert model.model.embed_tokens._compiled_call_impl is None and model.lm_head._compiled_call_impl is None
    assert list(model.state_dict()) == keys
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert all(p.grad is not None for p in model.parameters())
