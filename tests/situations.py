"""Made-up machines and models for runner.train.runtime.decide_runtime: its decisions are tested as a
table of situations, without loading a model (tests/test_runtime.py)."""

from __future__ import annotations

import dataclasses

from runner.train.runtime import Environment, ModelFacts, decide_runtime

LLAMA_LINEAR = ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")


def env(**changes) -> Environment:
    base = Environment(world_size=1, rank=0, device="cpu", bf16_supported=False, visible_gpus=0, varlen_missing=None,
                       flash_attn_installed=False, liger_available=False, cuda_alloc_conf=None)
    return dataclasses.replace(base, **changes)


def gpu(**changes) -> Environment:
    return env(**{"device": "cuda", "bf16_supported": True, "visible_gpus": 1, **changes})


def facts(**changes) -> ModelFacts:
    base = ModelFacts(model_type="llama", class_name="LlamaForCausalLM", uses_attention_interface=True,
                      varlen_unsupported=None, decoder_layer_class="LlamaDecoderLayer", checkpointable_layers=4,
                      linear_names=LLAMA_LINEAR, layer_stack="model.layers", num_layers=4,
                      parameter_names=("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                                       "model.layers.3.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"))
    return dataclasses.replace(base, **changes)


def runtime(plan, environment=None, model=None, train_rows: int = 64):
    return decide_runtime(plan, environment or env(), model or facts(), train_rows)[0]


def launch(plan, train_rows: int = 8):
    """The Runtime of `plan` on this machine, from the real model's facts."""
    from runner.train.runtime import environment, model_facts

    return decide_runtime(plan, environment(), model_facts(plan), train_rows)[0]


def loaded(plan, **kwargs):
    """(the model as the recipe loads it, its Runtime)."""
    from runner.train.model import load_model

    rt = launch(plan)
    return load_model(plan, dtype=rt.dtype, attn_implementation=rt.attn_implementation, **kwargs), rt


def adapted(plan):
    """(model with the plan's adapter applied, AdapterInfo)."""
    from runner.train.adapters import apply_adapter

    model, rt = loaded(plan)
    return apply_adapter(model, plan.adapter, rt)
