"""runner.data.fastbpe: tiktoken gives the `tokenizers` library's ids and offsets for the
tokenizers it takes (a real one, and byte-level BPEs built the GPT-2 way and the Llama-3 way, with
and without offset trimming), the whole pipeline's output is the same byte for byte with it and
without it, tokenizers it would not reproduce are refused before any text, and a difference found
while tokenizing sends the rest to `tokenizers`."""

from __future__ import annotations

import copy
import json
import multiprocessing

import pytest

from runner.data import fastbpe
from runner.data.tokenize import _encode, tokenize_items
from test_preprocess_fast import dataset_rows, renderer_for, tok, tricky_rows
from test_data_support import SHARED

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>"]

TEXTS = ["", " ", "  ", "a", " leading", "trailing ", "two  spaces   three    four", "\t\ttabs \t mixed",
         "line\nbreaks\n\n\nmany\r\nwindows\r\n", "  \n  \n", "I'M don't we'll THEY'RE it's", "12345678 1 22 333",
         "x=1;y==2!!! ???", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n ok <|im_end|>",
         " <|im_end|> ", "<|im_end|><|im_end|>", "<|im_en", "ctrl\x01\x02\x7f chars", "end with space <|eot_id|> ",
         "<|start_header_id|>assistant<|end_header_id|>\n\n  indented\n    code()\n<|eot_id|>"]


def _corpus() -> list[str]:
    rows = json.loads((SHARED / "alpaca_en_demo.json").read_text())
    text = ["\n".join((r["instruction"], r["input"], r["output"])) for r in rows]
    return text + [line for line in (SHARED / "wiki_demo.txt").read_text().splitlines()[:300] if line.strip()]


def _built(kind: str):
    """A byte-level BPE trained here on the shared data: 'gpt2' (ByteLevel's own split, offsets
    trimmed, a post-processor adding a prefix space) or 'llama3' (a Split regex then bytes, ignore_merges,
    a Sequence post-processor)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "gpt2":
        tok_ = Tokenizer(models.BPE())
        tok_.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok_.post_processor = processors.ByteLevel(trim_offsets=True, add_prefix_space=True)
    else:
        tok_ = Tokenizer(models.BPE(ignore_merges=True))
        tok_.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok_.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok_.train_from_iterator(_corpus(), trainer=trainer)
    if kind == "llama3":
        bos = tok_.token_to_id("<|begin_of_text|>")
        tok_.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok_, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = tok("tiny").chat_template
    return fast


_BUILT = {}


def tokenizer(which: str):
    if which in ("smollm2", "tiny"):
        return tok(which)
    if which not in _BUILT:
        _BUILT[which] = _built(which)
    return _BUILT[which]


WHICH = ["smollm2", "tiny", "gpt2", "llama3"]


@pytest.mark.parametrize("which", WHICH)
def test_tiktoken_gives_the_ids_and_offsets_of_tokenizers(which):
    t = tokenizer(which)
    engine = fastbpe.engine_for(t)
    assert engine is not None, fastbpe.why_not(json.loads(t.backend_tokenizer.to_str()))
    rendered = [t.apply_chat_template(r["messages"], tokenize=False) for r in dataset_rows()[:120]]
    texts = [x for x in TEXTS + rendered + _corpus()[:200] if x.isascii()]
    ids, encodings = fastbpe.encode_batch(engine, texts, offsets=True)
    reference = t.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    assert engine.trusted
    for text, mine, got, ref in zip(texts, ids, encodings, reference):
        assert mine == ref.ids, text
        assert [got.token_to_chars(i) for i in range(len(mine))] == ref.offsets, text
        assert [got.char_to_token(c) for c in range(len(text))] == [ref.char_to_token(c) for c in range(len(text))]


@pytest.mark.parametrize("which", WHICH)
def test_texts_tiktoken_does_not_take_go_to_tokenizers(which):
    """Non-ASCII texts, and control characters the vocabulary lacks, keep the tokenizer's own result."""
    t = tokenizer(which)
    engine = fastbpe.engine_for(t)
    texts = ["ünïcödé — 漢字 🙂", "plain", "tab\tand \x04 eot char", "emoji 🙂 <|im_end|>"]
    before = fastbpe.TEXTS_ENCODED
    ids, encodings = fastbpe.encode_batch(engine, texts, offsets=True)
    assert ids == [e.ids for e in t.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert fastbpe.TEXTS_ENCODED - before == sum(x.isascii() and not (engine.lacking and engine.lacking.search(x))
                                                 for x in texts) >= 1


def _columns(monkeypatch, tokenizer_, stage, items, renderer=None, template=None, seq=None, fast=True):
    monkeypatch.setenv("RUNNER_TIKTOKEN", "1" if fast else "0")
    fastbpe._ENGINES.clear()
    fastbpe.engine_for(tokenizer_)  # set up ahead: these few rows alone would not
    before = fastbpe.TEXTS_ENCODED
    enc = tokenize_items(items, stage, tokenizer_, renderer, template or {"train_on": "assistant"},
                         seq or {"max_length": 100_000}, progress=False)
    used = fastbpe.TEXTS_ENCODED - before
    return (enc.columns, enc.origins, dict(enc.counts), dict(enc.skipped), enc.rows_in), used


def _items(rows):
    from runner.data.tokenize import Item

    return [Item(row=r, origin=f"test.json row {i + 1}") for i, r in enumerate(rows)]


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("template", ["tokenizer", "llama3", "qwen3"])
def test_sft_output_is_the_same_byte_for_byte(which, template, monkeypatch):
    t = tokenizer(which)
    if template == "tokenizer" and which in ("gpt2", "llama3"):
        template = "chatml"
    items = _items(dataset_rows())
    fast, used = _columns(monkeypatch, t, "sft", items, renderer_for(t, template))
    slow, unused = _columns(monkeypatch, t, "sft", items, renderer_for(t, template), fast=False)
    assert used > len(items) // 2 and unused == 0
    assert fast == slow


@pytest.mark.parametrize("truncation", ["truncate", "split", "drop"])
def test_length_policies_and_train_on_all_are_the_same(truncation, monkeypatch):
    t = tokenizer("gpt2")
    items = _items(dataset_rows()[:150] + tricky_rows())
    seq = {"max_length": 96, "truncation": truncation}
    for train_on in ("all", "last"):
        template = {"train_on": train_on}
        args = (monkeypatch, t, "sft", items, renderer_for(t, "chatml"), template, seq)
        assert _columns(*args)[0] == _columns(*args, fast=False)[0]


def test_pretraining_and_preference_rows_are_the_same(monkeypatch):
    t = tokenizer("llama3")
    docs = [{"text": line} for line in (SHARED / "wiki_demo.txt").read_text().splitlines()[:200] if line.strip()]
    docs += [{"text": json.loads(x)["text"]} for x in (SHARED / "c4_demo.jsonl").read_text().splitlines()[:100]]
    items = _items(docs)
    for seq in ({"max_length": 100_000}, {"max_length": 256, "truncation": "split"}):
        fast, used = _columns(monkeypatch, t, "pt", items, seq=seq)
        assert used > 0 and fast == _columns(monkeypatch, t, "pt", items, seq=seq, fast=False)[0]
    from runner.data.formats import Normalizer

    pairs = _items([Normalizer("preference")(r) for r in json.loads((SHARED / "dpo_en_demo.json").read_text())[:80]])
    renderer = renderer_for(t, "chatml")
    fast, used = _columns(monkeypatch, t, "dpo", pairs, renderer)
    assert used > 0 and fast == _columns(monkeypatch, t, "dpo", pairs, renderer, fast=False)[0]


def _spec(which="tiny"):
    return json.loads(tokenizer(which).backend_tokenizer.to_str())


def _changed(change):
    spec = copy.deepcopy(_spec())
    change(spec)
    return spec


def _added(spec, content, **flags):
    spec["added_tokens"].append({"id": max(spec["model"]["vocab"].values()) + 1, "content": content, "single_word": False,
                                 "lstrip": False, "rstrip": False, "normalized": False, "special": True, **flags})


REFUSED = {
    "normalizer": (lambda s: s.update(normalizer={"type": "NFC"}), "normalizer"),
    "metaspace": (lambda s: s.update(pre_tokenizer={"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always",
                                                    "split": True}), "pre-tokenizer"),
    "prefix space": (lambda s: s["pre_tokenizer"].update(add_prefix_space=True), "pre-tokenizer"),
    "no regex": (lambda s: s["pre_tokenizer"].update(use_regex=False), "pre-tokenizer"),
    "roberta": (lambda s: s.update(post_processor={"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0],
                                                   "trim_offsets": True, "add_prefix_space": False}), "post-processor"),
    "lstrip": (lambda s: _added(s, "<mask>", lstrip=True), "strip"),
    "prefix of another": (lambda s: _added(s, "<|im"), "begins another"),
    "byte fallback": (lambda s: s["model"].update(byte_fallback=True), "byte-level"),
    "dropout": (lambda s: s["model"].update(dropout=0.1), "byte-level"),
    "suffix": (lambda s: s["model"].update(end_of_word_suffix="</w>"), "suffixes"),
    "truncation": (lambda s: s.update(truncation={"max_length": 8, "strategy": "LongestFirst", "stride": 0,
                                                  "direction": "Right"}), "truncation"),
    "merges out of order": (lambda s: s["model"]["merges"].reverse(), "order"),
    "orphan": (lambda s: s["model"]["vocab"].update({"ĠzqxzqxA": len(s["model"]["vocab"]) + 50}), "no merge"),
    "not bytes": (lambda s: s["model"]["vocab"].update({"▁word": len(s["model"]["vocab"]) + 60}), "byte-level"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_tokenizers_tiktoken_would_not_reproduce_are_refused(case):
    change, reason = REFUSED[case]
    assert fastbpe.why_not(_spec()) is None
    assert reason in (fastbpe.why_not(_changed(change)) or "")


def test_an_entry_the_merges_do_not_reach_whole_is_refused():
    """bc's merge ranks before ab's, so tokenizers (without ignore_merges) makes [a, bc] of 'abc'
    while tiktoken takes the entry 'abc' whole: the static checks pass, the merge check does not."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = fastbpe.byte_chars()
    vocab = {chars[b]: b for b in range(256)}
    vocab.update({"bc": 256, "ab": 257, "abc": 258})
    tok_ = Tokenizer(models.BPE(vocab=vocab, merges=[("b", "c"), ("a", "b"), ("ab", "c")]))
    tok_.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t = PreTrainedTokenizerFast(tokenizer_object=tok_)
    assert t.backend_tokenizer.encode("abc", add_special_tokens=False).ids == [97, 256]
    assert fastbpe.why_not(json.loads(t.backend_tokenizer.to_str())) is None
    assert fastbpe.engine_for(t) is None


def _divergent():
    """A vocabulary where tiktoken merges a pair that no merge rule names: 'b'+'c' has an id lower
    than 'a'+'b' but only (a, b) is a merge, so tokenizers gives [ab, c] and tiktoken [a, bc]."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = fastbpe.byte_chars()
    vocab = {chars[b]: b for b in range(256)}
    vocab.update({"bc": 256, "ab": 257})
    tok_ = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    tok_.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok_.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok_)


def test_a_difference_found_while_tokenizing_sends_the_rest_to_tokenizers(capsys):
    t = _divergent()
    spec = json.loads(t.backend_tokenizer.to_str())
    assert "no merge" in fastbpe.why_not(spec)  # refused up front; forced here to test the check
    engine = fastbpe.FastBPE(spec, t.backend_tokenizer)
    fastbpe._ENGINES[t] = (len(t), engine)
    texts = ["abc " * (i % 5 + 1) for i in range(100)]
    ids, _ = _encode(t, texts)
    assert ids == [e.ids for e in t.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert not engine.trusted and "tiktoken and the tokenizer differ" in capsys.readouterr().err
    before = fastbpe.TEXTS_ENCODED
    assert _encode(t, texts)[0] == ids and fastbpe.TEXTS_ENCODED == before  # not asked again


def test_a_split_regex_that_skips_characters_is_caught_on_any_text(capsys):
    """tiktoken drops what the split regex does not match; tokenizers keeps it as a piece. The
    byte count of every text's tokens shows it, whether or not the text is among those checked."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok_ = Tokenizer(models.BPE())
    tok_.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"[a-z]+| "), behavior="isolated"),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok_.decoder = decoders.ByteLevel()
    tok_.train_from_iterator(_corpus()[:200], trainer=trainers.BpeTrainer(
        vocab_size=600, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t = PreTrainedTokenizerFast(tokenizer_object=tok_)
    engine = fastbpe.engine_for(t)
    assert engine is not None
    texts = ["plain words only here"] * 200 + ["digits 123 and dots..."]  # one text of 201, not among the checked
    ids, _ = _encode(t, texts)
    assert ids == [e.ids for e in t.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert not engine.trusted and "differ" in capsys.readouterr().err


def test_a_few_texts_do_not_pay_for_the_setup():
    t = tokenizer("tiny")
    fastbpe._ENGINES.pop(t, None)
    assert fastbpe.engine_for(t, fastbpe.MIN_TEXTS_FOR_SETUP - 1) is None and t not in fastbpe._ENGINES
    before = fastbpe.TEXTS_ENCODED
    texts = ["a short text"] * fastbpe.MIN_TEXTS_FOR_SETUP
    ids, _ = _encode(t, texts[:100])
    assert fastbpe.TEXTS_ENCODED == before
    assert _encode(t, texts)[0] == [ids[0]] * len(texts)
    assert fastbpe.TEXTS_ENCODED - before == len(texts)
    assert _encode(t, texts[:100])[0] == ids and fastbpe.TEXTS_ENCODED - before == len(texts) + 100  # set up now


def _encode_in_child(texts):
    t = tokenizer("tiny")
    return fastbpe.engine_for(t).encode(texts)


def test_a_forked_worker_tokenizes_after_the_parent_used_its_threads(monkeypatch):
    """data.num_proc forks workers: the parent's thread pool does not exist there (no hang)."""
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    t = tokenizer("tiny")
    fastbpe._ENGINES.pop(t, None)
    engine = fastbpe.engine_for(t)
    engine.threads = 2
    texts = [f"row {i}: the quick brown fox" for i in range(200)]
    expected = engine.encode(texts)
    assert engine._pool is not None
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_encode_in_child, (texts,)).get(timeout=60) == expected
