"""The fast path on vision-language models, on tiny random models of each family with real
processor batches of mllm_demo.json: the chunked loss gives the model's own loss and LoRA
gradients; fused LoRA gives PEFT's outputs and gradients (language model and vision tower);
packed Qwen-VL rows give the per-sample losses and gradients under sdpa and varlen; what
decide_runtime picks for vision-language models; a packed run trains end to end."""

import json

import pytest
import torch

from situations import env, facts, gpu, runtime

from runner.errors import UserError
from runner.plan.resolve import make_plan
from tests.tiny_vlm import FAMILIES, save_tiny_vlm, write_vlm_config

QWEN = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    """family -> (model dir, plan, processor, training rows); built once per family."""
    from runner import data as pipeline
    from runner.data.vlm import load_processor

    root, made = tmp_path_factory.mktemp("vlmfast"), {}

    def get(family, packing=False):
        key = (family, packing)
        if key not in made:
            model_dir = root / family / "model"
            if not model_dir.is_dir():
                save_tiny_vlm(model_dir, family)
            cfg = write_vlm_config(root / family / f"pack{int(packing)}", model_dir,
                                   extra={"sequence": {"packing": packing}})
            plan = make_plan(cfg, [])
            data = pipeline.build_datasets(plan, progress=False)
            made[key] = model_dir, plan, load_processor(plan, None), [data.train[i] for i in range(len(data.train))]
        return made[key]

    return get


def load(model_dir, attn="sdpa"):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    return model.train()


def with_lora(model, tower=False):
    from peft import LoraConfig, get_peft_model

    from runner.train.vision import lora_targets

    from types import SimpleNamespace

    vision = SimpleNamespace(tower="lora" if tower else "frozen", projector="frozen")
    targets = lora_targets(model, vision, ["q_proj", "v_proj", "o_proj", "down_proj", "up_proj"])
    torch.manual_seed(1)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(got, want, atol):
    assert got.keys() == want.keys() and want
    assert any(g.abs().sum() > 0 for g in want.values())
    for name, g in got.items():
        assert torch.allclose(g, want[name], atol=atol, rtol=1e-4), (name, (g - want[name]).abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_loss_and_lora_grads_equal_the_models_own(vlm, family):
    from runner.train.fast.chunked_loss import chunked_forward_loss
    from runner.train.runtime import PLAIN_LOGITS, TRANSFORMED_LOGITS
    from runner.data.vlm_collate import VisionCollator

    model_dir, plan, processor, rows = vlm(family)
    batch = VisionCollator(processor, plan)(rows[:3])
    model = with_lora(load(model_dir))
    assert model.config.model_type in PLAIN_LOGITS + TRANSFORMED_LOGITS
    ref = model(**batch, use_cache=False).loss
    ref.backward()
    want = grads(model)
    model.zero_grad(set_to_none=True)
    loss = chunked_forward_loss(model, batch, chunk_tokens=7)
    loss.backward()
    assert torch.allclose(loss, ref, atol=1e-5), (loss, ref)
    assert_same_grads(grads(model), want, 1e-6)


def test_gemma3_vision_forward_hands_plain_logits_to_its_loss(vlm, tmp_path):
    """Gemma 3's text-only forward soft-caps its logits when the config says so; its vision-language
    forward does not (transformers 5): the chunked loss must equal the model's own loss even with a
    cap in the text config. A transformers that starts capping there fails here, not in training."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from runner.data.vlm_collate import VisionCollator
    from runner.train.fast.chunked_loss import chunked_forward_loss

    model_dir, plan, processor, rows = vlm("gemma3")
    config = AutoConfig.from_pretrained(model_dir)
    config.text_config.final_logit_softcapping = 2.0
    model = AutoModelForImageTextToText.from_pretrained(model_dir, config=config, dtype=torch.float32).train()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40)  # logits of a few units: a cap would bend them
    batch = VisionCollator(processor, plan)(rows[:2])
    ref = model(**batch, use_cache=False).loss
    assert torch.allclose(chunked_forward_loss(model, batch, chunk_tokens=5), ref, atol=1e-5)


@pytest.mark.parametrize("family, tower", [(f, False) for f in FAMILIES] + [("qwen2_5_vl", True), ("llava", True)])
def test_fused_lora_equals_peft_on_vision_language_models(vlm, family, tower):
    from runner.data.vlm_collate import VisionCollator
    from runner.train.fast.fused_lora import fuse_lora

    model_dir, plan, processor, rows = vlm(family)
    batch = VisionCollator(processor, plan)(rows[:3])
    peft_model, fused_model = with_lora(load(model_dir), tower), with_lora(load(model_dir), tower)
    routed = fuse_lora(fused_model)
    tower_layers = sum("lora_A" in n and any(t in n for t in ("visual", "vision_tower", "vision_model"))
                       for n, _ in fused_model.named_modules())
    assert routed > 0 and (tower_layers > 0) == tower
    ref = peft_model(**batch, use_cache=False)
    out = fused_model(**batch, use_cache=False)
    assert torch.allclose(out.logits, ref.logits, atol=1e-5)
    ref.loss.backward()
    out.loss.backward()
    assert_same_grads(grads(fused_model), grads(peft_model), 1e-5)


@pytest.mark.parametrize("family", QWEN)
@pytest.mark.parametrize("attention", ["sdpa", "varlen"])
def test_packed_qwen_rows_give_the_per_sample_losses_and_grads(vlm, family, attention):
    """One packed row of all samples: its mean loss is the token-weighted mean of each sample's own
    (unpacked, alone) loss, and so are the LoRA gradients; through the model's own loss and the
    chunked loss, with sdpa's block mask and with varlen attention (whose vision encoder calls go
    to sdpa)."""
    from runner.data.vlm_collate import PACKED_KEY, PackedVisionCollator, VisionCollator
    from runner.train.fast import varlen
    from runner.train.fast.chunked_loss import chunked_forward_loss
    from runner.train.fast.mrope import with_packed_positions

    model_dir, plan, processor, rows = vlm(family, packing=True)
    assert any(len(r["images"]) > 1 for r in rows)
    alone = with_lora(load(model_dir))
    total, summed = 0, 0.0
    for row in rows:
        batch = VisionCollator(processor, plan)([row])
        count = int((batch["labels"][:, 1:] != -100).sum())
        loss = alone(**batch, use_cache=False).loss * count
        loss.backward()
        total, summed = total + count, summed + float(loss.detach())
    want = {n: g / total for n, g in grads(alone).items()}
    losses = []
    for use_chunked in (False, True):
        model = with_lora(load(model_dir, varlen.register() if attention == "varlen" else "sdpa"))
        packed = PackedVisionCollator(processor, plan)(rows)
        assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
        assert packed[PACKED_KEY][:, 0].sum() == packed["input_ids"].shape[1]
        inputs = with_packed_positions(model, packed)
        assert inputs["position_ids"].shape == (4, 1, packed["input_ids"].shape[1])
        loss = chunked_forward_loss(model, inputs, chunk_tokens=64) if use_chunked else model(**inputs).loss
        loss.backward()
        losses.append(float(loss))
        assert_same_grads(grads(model), want, 1e-5)
    assert losses == pytest.approx([summed / total] * 2, abs=1e-5)


def test_packed_row_without_positions_would_train_wrong(vlm):
    """The check above can fail: the same packed row with the model's own (unrestarted) positions
    gives another loss."""
    from runner.data.vlm_collate import PACKED_KEY, PackedVisionCollator
    from runner.train.fast.mrope import with_packed_positions

    model_dir, plan, processor, rows = vlm("qwen2_5_vl", packing=True)
    model = load(model_dir)
    packed = PackedVisionCollator(processor, plan)(rows)
    right = float(model(**with_packed_positions(model, packed)).loss)
    naive = {k: v for k, v in packed.items() if k != PACKED_KEY}
    assert abs(float(model(**naive, use_cache=False).loss) - right) > 1e-4


# ---- decide_runtime for vision-language models ----------------------------------------------------
def vlm_plan(*overrides):
    from pathlib import Path

    return make_plan(Path(__file__).resolve().parent / "fixtures" / "configs" / "lora.yaml", list(overrides))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_decide_takes_the_chunked_loss_and_fused_lora_for_vision_language_models(model_type):
    fast = runtime(vlm_plan(), gpu(), facts(model_type=model_type)).fast_path
    assert fast.chunked_loss and fast.fused_lora
    assert not runtime(vlm_plan(), env(), facts(model_type=model_type)).fast_path.fused_lora


@pytest.mark.parametrize("model_type, packing, expected", [
    ("qwen2_5_vl", True, "varlen"), ("qwen3_vl", True, "varlen"), ("qwen2_5_vl", False, "sdpa"),
    ("llava", True, "sdpa"), ("llava", False, "sdpa"), ("idefics3", False, "sdpa"), ("llama", False, "varlen"),
])
def test_attention_auto_for_vision_language_models(model_type, packing, expected):
    rt = runtime(vlm_plan(f"sequence.packing={str(packing).lower()}"), gpu(), facts(model_type=model_type))
    assert rt.attn_implementation == expected
    if expected == "sdpa":
        assert "varlen" in rt.attn_implementation_auto or "mask" in rt.attn_implementation_auto


def test_varlen_named_for_unpacked_qwen_rows_is_refused():
    with pytest.raises(UserError) as err:
        runtime(vlm_plan("model.attn_implementation=varlen", "sequence.packing=false"), gpu(),
                facts(model_type="qwen2_5_vl"))
    assert "sequence.packing: true" in str(err.value) and err.value.where == "model.attn_implementation"


def test_selective_checkpointing_counts_the_language_models_layers(vlm):
    from runner.train.fast.checkpointing import checkpoint_callback, checkpointable
    from runner.train.runtime import facts_of

    model = load(vlm("qwen2_5_vl")[0])
    assert facts_of(model).checkpointable_layers == model.config.text_config.num_hidden_layers
    model.gradient_checkpointing_enable()
    checkpoint_callback(1).on_train_begin(None, None, None, model=model)
    layers = checkpointable(model)
    assert [bool(m.gradient_checkpointing) for m in layers] == [True] + [False] * (len(layers) - 1)
    assert all(b.gradient_checkpointing for b in model.model.visual.blocks)


def test_packed_qwen_run_trains_end_to_end(tmp_path):
    from runner.train.recipe import train

    model_dir = save_tiny_vlm(tmp_path / "model", "qwen2_5_vl")
    cfg = write_vlm_config(tmp_path, model_dir, training={"max_steps": 6, "micro_batch_size": 3,
                                                          "gradient_checkpointing": 1},
                           extra={"sequence": {"packing": True}})
    run_dir = train(make_plan(cfg, []))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2]), losses
    stored = json.loads((run_dir / "plan.json").read_text())
    assert stored["runtime"]["fast_path"]["chunked_loss"] and stored["runtime"]["fast_path"]["checkpointed_layers"] == "1/2"
