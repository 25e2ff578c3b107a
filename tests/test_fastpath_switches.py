"""Issue 8's memory/speed switches keep the numbers:

- sequence.truncation: split (stage pt) keeps every token of a long document, in pieces of at most
  max_length whose first label is -100, and lets packing fill its rows;
- training.gradient_checkpointing: N recomputes only the first N decoder layers, and the loss and
  gradients equal those without checkpointing (tiny Llama, fp32);
- a QLoRA base in bf16 stays in bf16 (no fp32 upcast of norms, embeddings and head).
Real wiki text, the tiny tokenizer and a tiny Llama; lint refuses split outside stage pt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from runner.cli import main
from runner.data.formats import Normalizer
from runner.data.packing import pack
from runner.data.tokenize import IGNORE, Item, tokenize_items
from runner.train.fast.checkpointing import checkpoint_callback
from runner.train.runtime import checkpointable_count, checkpointed_layers
from test_data_support import SHARED
from tiny_tokenizer import tiny_tokenizer

torch.set_num_threads(1)
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "configs"


@pytest.fixture(scope="module")
def wiki_items():
    lines = [x for x in (SHARED / "wiki_demo.txt").read_text().splitlines() if x.strip()]
    return [Item(Normalizer("text")({"text": x}), f"wiki_demo.txt:{i + 1}") for i, x in enumerate(lines)]


def _encode(items, policy, max_length):
    return tokenize_items(items, "pt", tiny_tokenizer(), None, {}, {"max_length": max_length, "truncation": policy},
                          False)


def test_split_keeps_every_token_in_pieces(wiki_items):
    whole = _encode(wiki_items, "truncate", 10 ** 7).columns
    split = _encode(wiki_items, "split", 256)
    cols = split.columns
    long_docs = sum(len(ids) > 256 for ids in whole["input_ids"])
    assert long_docs > 5 and split.counts["split"] == long_docs and not split.counts.get("truncated")
    assert all(len(ids) <= 256 for ids in cols["input_ids"])
    # Pieces of one document are consecutive and join back to its tokens.
    joined: dict[str, list] = {}
    for ids, origin in zip(cols["input_ids"], split.origins):
        joined.setdefault(origin, []).extend(ids)
    assert list(joined.values()) == whole["input_ids"]
    # Each piece's labels are its ids, except the first, which has no context in its row.
    for ids, labels in zip(cols["input_ids"], cols["labels"]):
        assert labels[0] == IGNORE and labels[1:] == ids[1:]


def test_split_pieces_pack_into_full_rows(wiki_items):
    whole = sum(len(x) for x in _encode(wiki_items, "truncate", 10 ** 7).columns["input_ids"])
    for max_length in (256, 1024, 2048):
        packed, stats = pack(_encode(wiki_items, "split", max_length).columns, max_length)
        assert stats["efficiency"] > 0.97, (max_length, stats)
        assert all(len(r) <= max_length for r in packed["input_ids"])
        assert sum(len(r) for r in packed["input_ids"]) == whole


def test_lint_refuses_split_outside_pretraining(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {{path: {FIXTURES / 'tiny-model'}}}\n"
                   f"datasets: [{{path: {FIXTURES / 'data' / 'alpaca_small.json'}}}]\n"
                   "sequence: {max_length: 128, truncation: split}\n")
    capsys.readouterr()
    assert main(["lint", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "sequence.truncation" in err and "stage sft" in err and "cfg.yaml:3:" in err, err


def _llama(layers=3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, use_cache=False)
    return LlamaForCausalLM(cfg).float()


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_selective_checkpointing_recomputes_the_first_layers_only_and_keeps_the_numbers():
    model = _llama(3)
    model.train()
    ids = torch.randint(0, 97, (2, 17), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids}
    ref_loss, ref_grads = _loss_and_grads(model, batch)

    n = checkpointable_count(model)
    assert checkpointed_layers(2, n) == "2/3" and checkpointed_layers(True, n) == "3/3"
    assert checkpointed_layers(7, n) == "3/3" and checkpointed_layers(False, n) is None
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpoint_callback(2).on_train_begin(None, None, None, model=model)
    assert [layer.gradient_checkpointing for layer in model.model.layers] == [True, True, False]

    runs = []  # (forward hooks do not fire in a recomputation: count calls of the MLP itself)
    for i in (0, 2):
        mlp = model.model.layers[i].mlp
        mlp.forward = (lambda f, i: lambda x: (runs.append(i), f(x))[1])(mlp.forward, i)
    loss, grads = _loss_and_grads(model, batch)
    assert sorted(runs) == [0, 0, 2]  # layer 0 ran again in backward, layer 2 did not
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], atol=1e-6), name


def test_train_with_selective_checkpointing_records_the_split(tmp_path):
    from tiny_model import save_tiny_model, write_config

    model_dir = save_tiny_model(tmp_path / "model", layers=3)
    cfg = write_config(tmp_path, model_dir, stage="pt", sequence={"max_length": 64, "packing": True,
                                                                  "truncation": "split"},
                       training={"gradient_checkpointing": 2, "max_steps": 2, "micro_batch_size": 2})
    assert main(["train", str(cfg)]) == 0
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["runtime"]["fast_path"]["checkpointed_layers"] == "2/3"
    assert '"split"' in json.dumps(plan["launch"]["data_stats"])  # c4 documents are longer than 64 tokens


# --- fused LoRA (runner.train.fast.fused_lora) --------------------------------------------------------------

def _lora_model(dtype=torch.float32, dropout=0.0, dora=False, bias="none", seed=0):
    from peft import LoraConfig, get_peft_model

    model = _llama(2).to(dtype)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, use_dora=dora, bias=bias, init_lora_weights=False,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return get_peft_model(model, cfg)


def _packed_batch():
    ids = torch.randint(0, 97, (2, 19), generator=torch.Generator().manual_seed(4))
    labels = ids.clone()
    labels[:, 0] = labels[0, 9] = -100
    pos = torch.cat([torch.arange(9), torch.arange(10)]).repeat(2, 1)
    return {"input_ids": ids, "labels": labels, "position_ids": pos}


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_lora_gives_peft_loss_and_gradients(dropout):
    from runner.train.fast.fused_lora import fuse_lora

    plain, fused = _lora_model(dropout=dropout), _lora_model(dropout=dropout)
    fused.load_state_dict(plain.state_dict())
    assert fuse_lora(fused) == 14 and fuse_lora(fused) == 0  # 7 projections x 2 layers, once
    fused.train(), plain.train()
    batch = _packed_batch()
    torch.manual_seed(11)  # dropout masks: the same draws in the same order on both sides
    ref_loss, ref_grads = _loss_and_grads(plain, batch)
    torch.manual_seed(11)
    loss, grads = _loss_and_grads(fused, batch)
    assert torch.allclose(loss, ref_loss, atol=1e-6), (loss, ref_loss)
    assert grads.keys() == ref_grads.keys() and any("lora_A" in n for n in grads)
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], atol=1e-5, rtol=1e-4), name


def test_fused_lora_in_bf16_stays_close_to_peft_under_autocast():
    from runner.train.fast.fused_lora import fuse_lora

    plain, fused = _lora_model(torch.bfloat16), _lora_model(torch.bfloat16)
    fused.load_state_dict(plain.state_dict())
    fuse_lora(fused)
    batch = _packed_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, ref_grads = _loss_and_grads(plain, batch)
        loss, grads = _loss_and_grads(fused, batch)
    assert abs(float(loss) - float(ref_loss)) < 2e-2 * abs(float(ref_loss))
    for name, g in grads.items():
        ref = ref_grads[name].float()
        assert g.dtype == ref_grads[name].dtype, name
        assert (g.float() - ref).norm() <= 0.05 * ref.norm() + 1e-3, name


@pytest.mark.parametrize("variant", ["dora", "disabled"])
def test_fused_lora_leaves_what_it_cannot_fuse_to_peft(variant):
    from runner.train.fast.fused_lora import _fusable, fuse_lora

    model = _lora_model(dora=variant == "dora")
    fuse_lora(model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(1, 3, 32)
    if variant == "disabled":
        assert _fusable(layer, x, {}) == "default"
        with model.disable_adapter():
            assert _fusable(layer, x, {}) is None
            assert torch.allclose(layer(x), layer.base_layer(x))
    else:
        assert _fusable(layer, x, {}) is None
    model.eval()  # dropout off: PEFT's forward and the routed one are the same call
    assert torch.allclose(layer(x), layer._runner_peft_forward(x))


def test_train_with_fused_lora_records_the_layers(tmp_path):
    from tiny_model import save_tiny_model, write_config

    model_dir = save_tiny_model(tmp_path / "model", layers=2)
    cfg = write_config(tmp_path, model_dir, training={"fused_lora": True, "max_steps": 2},
                       adapter={"target_modules": "all-linear"})
    assert main(["train", str(cfg)]) == 0
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["runtime"]["fast_path"]["fused_lora"] and plan["launch"]["fused_lora_layers"] == 14
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
