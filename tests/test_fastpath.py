"""The fast path's chunked cross-entropy gives the model's own loss and gradients (fp32, tiny Llama),
unpacked with padding, packed with restarting position ids, under gradient accumulation's
num_items_in_batch, and through a PEFT LoRA wrapper."""

from pathlib import Path

import pytest
import torch

from situations import env, facts, runtime

from runner.plan.resolve import make_plan
from runner.train.fast.chunked_loss import chunked_causal_lm_loss, chunked_forward_loss

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "configs"


def fast_path(model_type="llama", *overrides, world_size=1, backend="auto"):
    plan = make_plan(CONFIGS / "lora.yaml", [*overrides, f"distributed.backend={backend}"])
    return runtime(plan, env(world_size=world_size), facts(model_type=model_type)).fast_path

torch.set_num_threads(1)


def _model(vocab=97, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).float()


def _batch(vocab=97, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, 21), generator=g)
    labels = ids.clone()
    labels[0, :7] = -100  # a prompt that does not train
    labels[1, 15:] = -100  # padding
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 5, 1024])
def test_chunked_loss_and_grads_equal_the_models_own(chunk):
    model = _model()
    batch = _batch()
    ref = model(**batch, use_cache=False).loss
    ref.backward()
    ref_grads = _grads(model)
    model.zero_grad()
    loss = chunked_forward_loss(model, batch, chunk_tokens=chunk)
    loss.backward()
    assert torch.allclose(loss, ref, atol=1e-6), (loss, ref)
    for name, g in _grads(model).items():
        assert torch.allclose(g, ref_grads[name], atol=1e-6), name


def test_packed_rows_and_num_items_in_batch():
    model = _model()
    ids = torch.randint(0, 97, (1, 24), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[0, 0] = labels[0, 10] = -100  # the first token of each packed sample
    pos = torch.cat([torch.arange(10), torch.arange(14)]).unsqueeze(0)
    batch = {"input_ids": ids, "labels": labels, "position_ids": pos}
    ref = model(**batch, use_cache=False, num_items_in_batch=torch.tensor(40)).loss
    loss = chunked_forward_loss(model, batch, num_items_in_batch=torch.tensor(40), chunk_tokens=7)
    assert torch.allclose(loss, ref, atol=1e-6)


def test_through_a_peft_lora_wrapper():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                init_lora_weights=False))
    batch = _batch()
    ref = model(**batch, use_cache=False).loss
    loss = chunked_forward_loss(model, batch, chunk_tokens=8)
    assert torch.allclose(loss, ref, atol=1e-6)


def test_all_ignored_labels_give_zero_not_nan():
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(1, 4, 8, requires_grad=True)
    loss = chunked_causal_lm_loss(hidden, head, torch.full((1, 4), -100))
    assert loss.item() == 0.0


def test_decide_auto():
    fast = fast_path("llama")
    assert (fast.liger, fast.chunked_loss, fast.torch_compile) == (False, True, False)
    assert fast_path("llama", "training.chunked_loss=false").chunked_loss is False


def _tiny(model_type, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, **extra)
    return AutoModelForCausalLM.from_config(cfg).float()


@pytest.mark.parametrize("model_type, extra", [
    ("gemma2", {"final_logit_softcapping": 2.0}),  # small cap: the tanh really bends these logits
    ("cohere", {"logit_scale": 0.25}),
    ("granite", {"logits_scaling": 3.0}),
])
def test_models_that_transform_their_logits_get_the_same_loss_and_grads(model_type, extra):
    from runner.train.fast.chunked_loss import logits_transform
    from runner.train.runtime import TRANSFORMED_LOGITS

    model = _tiny(model_type, **extra)
    with torch.no_grad():  # logits of a few units, so that capping and scaling change the loss
        model.get_output_embeddings().weight.mul_(40)
    assert model.config.model_type in TRANSFORMED_LOGITS and logits_transform(model.config) is not None
    batch = _batch()
    ref = model(**batch, use_cache=False).loss
    ref.backward()
    ref_grads = _grads(model)
    model.zero_grad()
    plain = chunked_causal_lm_loss(model.get_decoder()(input_ids=batch["input_ids"],
                                                       attention_mask=batch["attention_mask"])[0],
                                   model.get_output_embeddings(), batch["labels"])
    assert not torch.allclose(plain, ref, atol=1e-3), "the transform matters for this model"
    loss = chunked_forward_loss(model, batch, chunk_tokens=5)
    loss.backward()
    assert torch.allclose(loss, ref, atol=1e-5), (loss, ref)
    for name, g in _grads(model).items():
        assert torch.allclose(g, ref_grads[name], atol=1e-5), name


def test_decide_keeps_the_chunked_loss_to_models_it_knows():
    from runner.errors import UserError

    unknown = fast_path("falcon_h1")  # multiplies its logits by lm_head_multiplier in forward
    assert unknown.chunked_loss is False and "falcon_h1" in unknown.chunked_loss_off_because
    with pytest.raises(UserError, match="does not know how a 'falcon_h1' model"):
        fast_path("falcon_h1", "training.chunked_loss=true")
    assert fast_path("llama", world_size=2).chunked_loss is True
    capped = fast_path("gemma2", world_size=2)
    assert capped.chunked_loss is False and "DDP" in capped.chunked_loss_off_because
    assert fast_path("gemma2").chunked_loss is True
    assert fast_path("llama", world_size=2, backend="fsdp").chunked_loss is False


def test_gpu_runs_ask_trainer_for_pinned_non_blocking_batch_copies(tmp_path):
    """train.py passes accelerator_config={"non_blocking": True} on a GPU; the Trainer of this
    transformers must hand it to accelerate's dataloader settings (checked here on the CPU)."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from tests.tiny_model import tiny_config

    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, dataloader_pin_memory=True,
                             accelerator_config={"non_blocking": True})
    try:
        trainer = Trainer(model=model, args=args)
        assert trainer.accelerator.dataloader_config.non_blocking is True
    finally:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
