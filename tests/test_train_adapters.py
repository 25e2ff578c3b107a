"""Model loading and adapter construction on tiny random models (no training loop here)."""

import dataclasses

import pytest
import torch

from situations import adapted, launch, loaded

from runner.errors import UserError
from runner.plan.resolve import make_plan
from runner.train.adapters import apply_adapter, loraplus_param_groups
from runner.train.model import load_model
from tests.tiny_model import save_tiny_model, write_config

torch.set_num_threads(1)
LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def plan_for(tmp_path, model_dir, **kw):
    return make_plan(write_config(tmp_path, model_dir, **kw))


def test_all_linear_resolves_to_concrete_names_without_head(tmp_path, model_dir):
    plan = plan_for(tmp_path, model_dir)
    model, rt = loaded(plan)
    assert list(rt.target_modules) == LINEARS
    assert model.config.use_cache is False
    excluded = launch(plan_for(tmp_path, model_dir, adapter={"exclude_modules": ["o_proj"]})).target_modules
    assert "o_proj" not in excluded and "q_proj" in excluded


@pytest.mark.parametrize(
    "adapter,check",
    [
        ({"kind": "lora"}, lambda m: all(not p.requires_grad for n, p in m.named_parameters() if "lora_" not in n)),
        ({"kind": "lora", "dora": True}, lambda m: any("lora_magnitude_vector" in n for n, _ in m.named_parameters())),
        ({"kind": "lora", "rslora": True, "r": 4, "alpha": 8},
         lambda m: abs(m.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] - 8 / 4 ** 0.5) < 1e-6),
        ({"kind": "lora", "init": "pissa_niter_4"},
         lambda m: m.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.abs().sum() > 0),
        ({"kind": "lora", "modules_to_save": ["lm_head"]},
         lambda m: any("modules_to_save" in n and p.requires_grad for n, p in m.named_parameters())),
        ({"kind": "full"}, lambda m: all(p.requires_grad for p in m.parameters())),
        ({"kind": "freeze", "trainable_layers": 1},
         lambda m: {n.split(".")[2] for n, p in m.named_parameters() if p.requires_grad} == {"1"}),
        ({"kind": "freeze", "trainable_modules": [r"\.mlp\."]},
         lambda m: all(".mlp." in n for n, p in m.named_parameters() if p.requires_grad)),
    ],
    ids=["lora", "dora", "rslora", "pissa", "modules_to_save", "full", "freeze_layers", "freeze_modules"],
)
def test_adapter_kinds(tmp_path, model_dir, adapter, check):
    plan = plan_for(tmp_path, model_dir, adapter=adapter)
    model, info = adapted(plan)
    assert check(model)
    assert 0 < info.trainable_params <= info.total_params
    assert "trainable params" in info.summary()
    if adapter["kind"] == "full":
        assert info.trainable_params == info.total_params
    else:
        assert info.trainable_params < info.total_params


def test_freeze_pattern_that_matches_nothing_is_a_user_error(tmp_path, model_dir):
    plan = plan_for(tmp_path, model_dir, adapter={"kind": "freeze", "trainable_modules": ["no_such_module"]})
    with pytest.raises(UserError, match="matches no parameter"):
        launch(plan)


def test_loraplus_groups_give_b_matrices_the_higher_rate(tmp_path, model_dir):
    plan = plan_for(tmp_path, model_dir, adapter={"loraplus_lr_ratio": 16})
    model, _ = adapted(plan)
    groups = loraplus_param_groups(model, lr=1e-3, ratio=16, lr_embedding=1e-6, weight_decay=0.0)
    by_name = {g["name"]: g for g in groups}
    assert by_name["loraplus_B"]["lr"] == pytest.approx(16e-3)
    assert by_name["loraplus_A"]["lr"] == pytest.approx(1e-3)
    ids_b = {id(p) for p in by_name["loraplus_B"]["params"]}
    for name, param in model.named_parameters():
        if "lora_B" in name:
            assert id(param) in ids_b
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)


def test_pissa_on_quantized_base_is_refused(tmp_path, model_dir):
    # The plan's checks refuse this combination already; the execution layer refuses it too.
    with pytest.raises(UserError, match="PiSSA"):
        plan_for(tmp_path, model_dir, adapter={"init": "pissa"}, extra={"quantization": {"bits": 4}})
    plan = plan_for(tmp_path, model_dir, extra={"quantization": {"bits": 4}})
    plan = dataclasses.replace(plan, adapter=dataclasses.replace(plan.adapter, init="pissa"))
    model, rt = loaded(plan)
    assert getattr(model, "is_loaded_in_4bit", False)
    with pytest.raises(UserError, match="unquantized"):
        apply_adapter(model, plan.adapter, rt)


def test_qlora_4bit_loads_and_wraps(tmp_path, model_dir):
    plan = plan_for(tmp_path, model_dir, extra={"quantization": {"bits": 4, "quant_type": "fp4", "double_quant": False}})
    model, info = adapted(plan)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == "Linear4bit"
    assert q_proj.base_layer.weight.quant_type == "fp4"
    assert info.target_modules == LINEARS


def test_flash_attention_missing_is_a_clear_error(tmp_path, model_dir):
    plan = plan_for(tmp_path, model_dir, extra={"model": {"path": str(model_dir), "attn_implementation": "flash_attention_2"}})
    with pytest.raises(UserError, match="flash"):
        launch(plan)


def test_hub_id_offline_names_the_model_and_the_fix(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = plan_for(tmp_path, model_dir)
    plan = dataclasses.replace(plan, model=dataclasses.replace(plan.model, path="acme-nonexistent/tiny-model-xyz",
                                                               source="hub"))
    with pytest.raises(UserError) as err:
        load_model(plan, dtype="float32", attn_implementation="sdpa")
    assert "acme-nonexistent/tiny-model-xyz" in err.value.message
    assert "local" in err.value.hint and "model.path" in err.value.hint


def test_target_modules_mix_names_and_regexes(tmp_path, model_dir):
    plan = plan_for(tmp_path, model_dir, adapter={"target_modules": [r"model\.layers\.1\.self_attn\.(q|v)_proj", "up_proj"],
                                                  "exclude_modules": [r".*layers\.0\.mlp\.up_proj"]})
    model, _ = adapted(plan)
    names = sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A))
    assert [n[n.index("layers."):] for n in names] == [
        "layers.1.mlp.up_proj", "layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj"]


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory):
    # bitsandbytes' 4-bit blocks need layers at least 64 wide
    return save_tiny_model(tmp_path_factory.mktemp("wide") / "model", hidden=64)


@pytest.mark.parametrize("quant", [{"bits": 4, "compute_dtype": "float32"}, {"bits": 8}], ids=["4bit", "8bit"])
def test_dora_on_quantized_bases_trains_a_step(tmp_path, wide_model_dir, quant):
    plan = plan_for(tmp_path, wide_model_dir, adapter={"dora": True}, extra={"quantization": quant})
    model, _ = adapted(plan)
    assert any("lora_magnitude_vector" in n for n, _ in model.named_parameters())
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
