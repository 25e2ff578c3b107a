"""Packing on a tiny random Llama (fp32, sdpa): each sample's logits inside a packed row equal its
logits alone; the packed batch's loss equals the token-weighted loss of the same samples unpacked;
the collator's packed batch carries per-sample position ids and no attention mask."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from runner.data.collate import PackedCollator, PaddedCollator, make_collator
from runner.data.packing import best_fit_bins, pack

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def samples():
    """Real SFT samples: alpaca rows through the pipeline with the tiny tokenizer and ChatML."""
    from runner.data.formats import Normalizer
    from runner.data.render import Renderer
    from runner.data.templates import resolve_template
    from runner.data.tokenize import Item, tokenize_items
    from test_data_support import SHARED
    from tiny_tokenizer import tiny_tokenizer
    import json

    tok = tiny_tokenizer()
    rows = json.loads((SHARED / "alpaca_en_demo.json").read_text())[:12]
    items = [Item(Normalizer("alpaca")(r), str(i)) for i, r in enumerate(rows)]
    renderer = Renderer.for_tokenizer(resolve_template({"name": "chatml"}), tok)
    enc = tokenize_items(items, "sft", tok, renderer, {}, {"max_length": 96, "truncation": "truncate"}, False)
    return tok, enc.columns


@pytest.fixture(scope="module")
def model(samples):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok, _ = samples
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         attn_implementation="sdpa", use_cache=False)
    return LlamaForCausalLM(config).float().eval()


def test_best_fit_keeps_every_sample_once_and_fits():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = best_fit_bins(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert sum(lengths) / (len(bins) * 128) > 0.95


def test_packed_rows_restart_positions_and_mask_boundaries(samples):
    _, columns = samples
    packed, stats = pack(columns, 256)
    assert stats["samples"] == len(columns["input_ids"]) and stats["rows"] == len(packed["input_ids"]) < stats["samples"]
    assert stats["efficiency"] == round(sum(map(len, columns["input_ids"])) / (stats["rows"] * 256), 4)
    for ids, labels, positions in zip(packed["input_ids"], packed["labels"], packed["position_ids"]):
        assert len(ids) == len(labels) == len(positions) <= 256
        starts = [i for i, p in enumerate(positions) if p == 0]
        assert all(labels[s] == -100 for s in starts)  # no loss crosses a sample boundary


def test_packed_logits_and_loss_equal_unpacked(samples, model):
    tok, columns = samples
    packed, _ = pack(columns, 256)
    rows = [dict(zip(packed, values)) for values in zip(*packed.values())]
    batch = PackedCollator(tok.pad_token_id)(rows[:2])
    assert "position_ids" in batch and "attention_mask" not in batch
    with torch.no_grad():
        out = model(**batch)
        for r, row in enumerate(rows[:2]):
            starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
            for a, b in zip(starts, starts[1:]):
                alone = model(input_ids=torch.tensor([row["input_ids"][a:b]])).logits[0]
                torch.testing.assert_close(out.logits[r, a:b], alone, atol=1e-5, rtol=1e-4)

        # The same samples unpacked, right-padded with an attention mask: token-weighted mean loss.
        members = []
        for row in rows[:2]:
            starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
            members += [{"input_ids": row["input_ids"][a:b], "labels": row["labels"][a:b]}
                        for a, b in zip(starts, starts[1:])]
        unpacked = PaddedCollator(tok.pad_token_id)(members)
        assert set(unpacked) == {"input_ids", "labels", "attention_mask"}
        torch.testing.assert_close(out.loss, model(**unpacked).loss, atol=1e-5, rtol=1e-5)

        # Control: a plain attention mask of ones would let samples attend to each other.
        leaky = model(**batch, attention_mask=torch.ones_like(batch["input_ids"])).logits
        assert not torch.allclose(leaky, out.logits, atol=1e-4)


def test_make_collator_follows_the_plan(samples):
    tok, columns = samples
    unsplit = SimpleNamespace(context_parallel=1, sequence_parallel=1)
    plan = SimpleNamespace(training=SimpleNamespace(collator="packed"), distributed=unsplit)
    assert isinstance(make_collator(plan, tok), PackedCollator)
    plan = SimpleNamespace(training=SimpleNamespace(collator="padded"), distributed=unsplit)
    collator = make_collator(plan, tok)
    batch = collator([{"input_ids": columns["input_ids"][0], "labels": columns["labels"][0]},
                      {"input_ids": columns["input_ids"][1][:5], "labels": columns["labels"][1][:5]}])
    assert batch["attention_mask"][1].tolist() == [1] * 5 + [0] * (batch["input_ids"].shape[1] - 5)
    assert (batch["labels"][1, 5:] == -100).all() and (batch["input_ids"][1, 5:] == tok.pad_token_id).all()
    assert make_collator(SimpleNamespace(training=SimpleNamespace(collator="preference")), tok) is None
