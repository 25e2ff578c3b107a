"""decide_runtime as a table: made-up machines and model facts (tests/situations.py) -> the decisions,
without loading a model. The facts themselves are read from real models at the end."""

from __future__ import annotations

from pathlib import Path

import pytest
from situations import LLAMA_LINEAR, env, facts, gpu, runtime

from runner.errors import UserError
from runner.plan.resolve import make_plan
from runner.train.runtime import decide_runtime, total_steps

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "configs"


def plan(*overrides, config="lora.yaml"):
    return make_plan(CONFIGS / config, list(overrides))


def plan_with(tmp_path, adapter: str):
    """A LoRA-fixture plan with another adapter section (lists cannot be given as overrides)."""
    text = (CONFIGS / "lora.yaml").read_text().replace("adapter: {kind: lora, r: 8}", f"adapter: {adapter}")
    text = text.replace("path: ./tiny-model", f"path: {CONFIGS / 'tiny-model'}")
    text = text.replace("path: data/", f"path: {CONFIGS / 'data'}/")
    (tmp_path / "cfg.yaml").write_text(text)
    return make_plan(tmp_path / "cfg.yaml")


# --- backend, world, batch ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend, world, expected", [
    ("auto", 1, "single"), ("auto", 4, "ddp"), ("ddp", 1, "ddp"), ("fsdp", 2, "fsdp"), ("single", 1, "single"),
])
def test_backend(backend, world, expected):
    rt = runtime(plan(f"distributed.backend={backend}"), env(world_size=world))
    assert rt.backend == expected and rt.world_size == world


def test_fsdp_wraps_the_decoder_layer_class_unless_named():
    assert runtime(plan("distributed.backend=fsdp")).fsdp_wrap_class == "LlamaDecoderLayer"
    named = plan("distributed.backend=fsdp", "distributed.fsdp.wrap_class=MyBlock")
    assert runtime(named).fsdp_wrap_class == "MyBlock"
    assert runtime(plan()).fsdp_wrap_class is None
    with pytest.raises(UserError, match="decoder layer class"):
        runtime(plan("distributed.backend=fsdp"), model=facts(decoder_layer_class=None))


def test_effective_batch_is_per_process_batch_times_world():
    p = plan("training.micro_batch_size=2", "training.gradient_accumulation=3")
    assert runtime(p, env(world_size=4)).effective_batch_size == 24


@pytest.mark.parametrize("rows, micro, accum, world, epochs, expected", [
    (64, 2, 4, 1, 1, 8), (65, 2, 4, 1, 1, 9), (10, 4, 1, 1, 2, 6), (100, 2, 4, 2, 1, 7), (3, 8, 4, 1, 3, 3),
    (100, 1, 1, 1, 0.5, 50),
])
def test_total_steps_as_the_trainer_counts_them(rows, micro, accum, world, epochs, expected):
    p = plan(f"training.micro_batch_size={micro}", f"training.gradient_accumulation={accum}",
             f"training.epochs={epochs}")
    assert total_steps(p, rows, world) == expected
    assert total_steps(plan("training.max_steps=7"), rows, world) == 7


# --- dtype and precision ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, precision, machine, want_dtype, want_precision", [
    ("auto", "auto", env(), "float32", "fp32"),
    ("auto", "auto", gpu(), "bfloat16", "bf16"),
    ("auto", "auto", gpu(bf16_supported=False), "float32", "fp32"),
    ("float16", "auto", gpu(bf16_supported=False), "float16", "fp16"),
    ("bfloat16", "auto", env(), "bfloat16", "bf16"),
    ("float32", "fp32", gpu(), "float32", "fp32"),
    ("auto", "fp16", gpu(), "bfloat16", "fp16"),
])
def test_dtype_and_precision(dtype, precision, machine, want_dtype, want_precision):
    rt = runtime(plan(f"model.dtype={dtype}", f"training.precision={precision}"), machine)
    assert (rt.dtype, rt.precision) == (want_dtype, want_precision)


# --- attention ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("machine, model, overrides, expected, why", [
    (gpu(), facts(), (), "varlen", None),
    (env(), facts(), (), "sdpa", "the device is cpu"),
    (gpu(varlen_missing="torch 2.4 has no varlen_attn (needs >= 2.9)"), facts(), (), "sdpa", "needs >= 2.9"),
    (gpu(), facts(), ("training.torch_compile=true",), "varlen", None),   # varlen runs outside each layer's graph
    (gpu(), facts(uses_attention_interface=False), (), "sdpa", "attention interface"),
    (gpu(), facts(varlen_unsupported="it soft-caps its attention scores"), (), "sdpa", "soft-caps"),
    (gpu(), facts(), ("model.attn_implementation=eager",), "eager", None),
])
def test_attention(machine, model, overrides, expected, why):
    rt = runtime(plan(*overrides), machine, model)
    assert rt.attn_implementation == expected
    assert (rt.attn_implementation_auto is None) == (why is None)
    if why:
        assert why in rt.attn_implementation_auto


@pytest.mark.parametrize("machine, model, message", [
    (gpu(varlen_missing="torch 2.4 has no varlen_attn"), facts(), "no varlen_attn"),
    (gpu(), facts(varlen_unsupported="it uses sliding windows"), "sliding windows"),
])
def test_explicit_varlen_that_cannot_run_is_refused_before_loading(machine, model, message):
    with pytest.raises(UserError, match=message) as err:
        runtime(plan("model.attn_implementation=varlen"), machine, model)
    assert err.value.where == "model.attn_implementation"


def test_flash_attention_2_needs_the_package_and_a_gpu():
    with pytest.raises(UserError, match="not installed"):
        runtime(plan("model.attn_implementation=flash_attention_2"), gpu())
    with pytest.raises(UserError, match="CUDA GPU"):
        runtime(plan("model.attn_implementation=flash_attention_2"), env(flash_attn_installed=True))
    ok = runtime(plan("model.attn_implementation=flash_attention_2"), gpu(flash_attn_installed=True))
    assert ok.attn_implementation == "flash_attention_2"


# --- fast path ----------------------------------------------------------------------------------------

def test_torch_compile_is_recorded_as_compiled_layers_and_joins_the_hash():
    off = runtime(plan(), gpu())
    on = runtime(plan("training.torch_compile=true"), gpu(), facts(checkpointable_layers=12))
    assert off.fast_path.compiled_layers is None and "compiled_layers" not in off.reproducible()["fast_path"]
    assert on.fast_path.compiled_layers == "12/12" == on.reproducible()["fast_path"]["compiled_layers"]


@pytest.mark.parametrize("overrides, model, message", [
    (("distributed.backend=fsdp",), facts(checkpointable_layers=12, decoder_layer_class="LlamaDecoderLayer"), "fsdp"),
    ((), facts(checkpointable_layers=0), "has none"),
])
def test_torch_compile_refusals_name_the_key(overrides, model, message):
    with pytest.raises(UserError, match=message) as err:
        runtime(plan("training.torch_compile=true", *overrides), gpu(), model)
    assert err.value.where == "training.torch_compile"


def test_liger_on_a_gpu_where_installed_and_the_family_fits():
    assert runtime(plan(), gpu(liger_available=True)).fast_path.liger
    assert not runtime(plan(), gpu()).fast_path.liger
    assert not runtime(plan(), gpu(liger_available=True), facts(model_type="gpt2")).fast_path.liger
    assert not runtime(plan(), env(liger_available=True)).fast_path.liger
    with pytest.raises(UserError, match="Liger"):
        runtime(plan("training.liger=true"), gpu())


def test_chunked_loss():
    assert runtime(plan()).fast_path.chunked_loss
    liger = runtime(plan(), gpu(liger_available=True)).fast_path
    assert liger.liger and not liger.chunked_loss  # Liger's fused cross-entropy already avoids the logits
    unknown = runtime(plan(), model=facts(model_type="gpt2")).fast_path
    assert not unknown.chunked_loss and "gpt2" in unknown.chunked_loss_off_because
    sharded = runtime(plan("distributed.backend=fsdp")).fast_path
    assert not sharded.chunked_loss and "sharded" in sharded.chunked_loss_off_because
    ddp_capped = runtime(plan(), env(world_size=2), facts(model_type="gemma2")).fast_path
    assert not ddp_capped.chunked_loss and "gemma2" in ddp_capped.chunked_loss_off_because
    assert runtime(plan(), env(world_size=2), facts(model_type="qwen2")).fast_path.chunked_loss
    with pytest.raises(UserError, match="gpt2"):
        runtime(plan("training.chunked_loss=true"), model=facts(model_type="gpt2"))
    assert not runtime(plan("training.chunked_loss=false")).fast_path.chunked_loss


@pytest.mark.parametrize("overrides, machine, expected", [
    ((), gpu(), True), ((), env(), False), (("training.fused_lora=true",), env(), True),
    (("distributed.backend=fsdp",), gpu(), False), (("training.fused_lora=false",), gpu(), False),
])
def test_fused_lora(overrides, machine, expected):
    assert runtime(plan(*overrides), machine).fast_path.fused_lora is expected


def test_fused_lora_off_for_quantized_bases_and_other_adapters():
    assert not runtime(plan(config="qlora.yaml"), gpu()).fast_path.fused_lora
    assert not runtime(plan(config="full.yaml"), gpu()).fast_path.fused_lora


def test_non_blocking_copies_on_gpus():
    assert runtime(plan(), gpu()).fast_path.non_blocking_copies
    assert not runtime(plan(), env()).fast_path.non_blocking_copies


@pytest.mark.parametrize("setting, layers, expected", [(False, 4, None), (True, 4, "4/4"), (2, 4, "2/4"),
                                                       (9, 4, "4/4"), (True, 0, None)])
def test_checkpointed_layers(setting, layers, expected):
    p = plan(f"training.gradient_checkpointing={str(setting).lower()}")
    rt, notes = decide_runtime(p, env(), facts(checkpointable_layers=layers), 64)
    assert rt.fast_path.checkpointed_layers == expected
    assert bool(notes) == (setting == 2 and layers == 0)


def test_selective_checkpointing_on_a_model_without_layers_warns():
    _, notes = decide_runtime(plan("training.gradient_checkpointing=2"), env(), facts(checkpointable_layers=0), 64)
    assert any("every layer is checkpointed" in n for n in notes)


def test_one_process_that_sees_several_gpus_is_told_it_trains_on_one():
    _, notes = decide_runtime(plan(), gpu(visible_gpus=2), facts(), 64)
    assert any("2 GPUs are visible" in n for n in notes)
    _, notes = decide_runtime(plan(), gpu(visible_gpus=2, world_size=2), facts(), 64)
    assert not notes


# --- what trains --------------------------------------------------------------------------------------

def test_all_linear_is_made_concrete_and_excludes_apply(tmp_path):
    assert runtime(plan()).target_modules == LLAMA_LINEAR
    excluded = runtime(plan_with(tmp_path, "{kind: lora, exclude_modules: [o_proj, down_proj]}")).target_modules
    assert "o_proj" not in excluded and "down_proj" not in excluded and "q_proj" in excluded
    named = plan_with(tmp_path, "{kind: lora, target_modules: [q_proj, v_proj]}")
    assert runtime(named).target_modules == ("q_proj", "v_proj")
    with pytest.raises(UserError, match="no module left"):
        runtime(plan_with(tmp_path, "{kind: lora, target_modules: [q_proj], exclude_modules: [q_proj]}"))


def test_freeze_names_the_blocks_and_patterns_it_trains(tmp_path):
    p = plan(config="freeze.yaml")
    rt = runtime(p)
    assert rt.trained_layers == tuple(f"model.layers.{i}" for i in range(4 - p.adapter.trainable_layers, 4))
    assert rt.target_modules == rt.trained_layers + p.adapter.trainable_modules
    with pytest.raises(UserError, match="matches no parameter"):
        runtime(plan_with(tmp_path, "{kind: freeze, trainable_modules: [nothing_like_this]}"))
    with pytest.raises(UserError, match="decoder layers"):
        runtime(p, model=facts(layer_stack=None, num_layers=0))


def test_full_fine_tuning_adapts_no_modules():
    rt = runtime(plan(config="full.yaml"))
    assert rt.target_modules == () and rt.trained_layers == ()


# --- the hash ----------------------------------------------------------------------------------------

def test_the_runtime_joins_the_plan_hash_but_not_machine_noise():
    p = plan()
    base = p.with_runtime(runtime(p)).hashes.plan
    assert base != p.hashes.plan
    assert p.with_runtime(runtime(p, env(cuda_alloc_conf="expandable_segments:True"))).hashes.plan == base
    assert p.with_runtime(runtime(p, env(world_size=2))).hashes.plan != base
    assert p.with_runtime(runtime(p, gpu())).hashes.plan != base


# --- facts from real models ---------------------------------------------------------------------------

def test_model_facts_of_a_real_model(tmp_path):
    from tiny_model import save_tiny_model

    from runner.train.runtime import model_facts

    path = save_tiny_model(tmp_path / "m")
    p = make_plan(CONFIGS / "lora.yaml", [f"model.path={path}"])
    found = model_facts(p)
    assert found.model_type == "llama" and found.decoder_layer_class == "LlamaDecoderLayer"
    assert found.linear_names == LLAMA_LINEAR and found.layer_stack == "model.layers"
    assert found.num_layers == found.checkpointable_layers >= 1
    assert found.uses_attention_interface and found.varlen_unsupported is None
    assert "lm_head.weight" in found.parameter_names or "model.embed_tokens.weight" in found.parameter_names


def test_model_facts_of_the_gguf_quickstart_model(smollm_dir):
    from runner.train.runtime import model_facts

    p = make_plan(Path(__file__).resolve().parents[1] / "cookbook" / "quickstart.yaml")
    found = model_facts(p)
    assert found.model_type == "llama" and found.linear_names == LLAMA_LINEAR and found.num_layers == 30
