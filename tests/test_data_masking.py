"""Loss masking: for each format and each named template, on SmolLM2's real tokenizer and on the
tiny in-process tokenizer, the trained tokens cover exactly the assistant outputs (content plus
end-of-turn token), checked through token offsets against an independent oracle that locates the
turns in the rendered text by the template's own header and end-of-turn strings. A token that BPE
merges across a boundary is allowed and counted."""

from __future__ import annotations

import json
import re

import pytest

from runner.data.formats import Normalizer
from runner.data.render import Renderer
from runner.data.templates import NAMED, resolve_template
from runner.data.tokenize import IGNORE, Item, tokenize_items
from test_data_support import SHARED, smol_tokenizer

# template -> (assistant headers, end-of-turn string, suffix after the final turn). Headers are
# regular expressions; DeepSeek-V3's official template opens later tool-call turns with no header
# at all (its `is_first` flag never resets), hence the lookahead.
ORACLE = {
    "chatml": ([re.escape("<|im_start|>assistant\n")], "<|im_end|>\n", ""),
    "tokenizer": ([re.escape("<|im_start|>assistant\n")], "<|im_end|>\n", ""),
    "qwen2.5": ([re.escape("<|im_start|>assistant\n")], "<|im_end|>\n", ""),
    "qwen3": ([re.escape("<|im_start|>assistant\n")], "<|im_end|>\n", ""),
    "qwen3-nothink": ([re.escape("<|im_start|>assistant\n<think>\n\n</think>\n\n")], "<|im_end|>\n", ""),
    "llama3": ([re.escape("<|start_header_id|>assistant<|end_header_id|>\n\n")], "<|eot_id|>", ""),
    "llama2": ([re.escape(" [/INST]")], " {eos}", ""),
    "mistral": ([re.escape(" [/INST]")], "{eos}", ""),
    "gemma": ([re.escape("<start_of_turn>model\n")], "<end_of_turn>\n", ""),
    "phi3": ([re.escape("<|assistant|>\n")], "<|end|>\n", "{eos}"),
    "deepseek": ([re.escape("<｜Assistant｜>"), re.escape("<｜tool▁outputs▁end｜>"), r"(?=\n<｜tool▁call▁begin｜>)"], "<｜end▁of▁sentence｜>", ""),
    "vicuna": ([re.escape("ASSISTANT:")], "{eos}", ""),
    "alpaca": ([re.escape("### Response:\n")], "{eos}", ""),
}
ALL_SPECIALS = ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|begin_of_text|>", "<start_of_turn>",
                "<end_of_turn>", "<bos>", "<|assistant|>", "<|user|>", "<|system|>", "<|end|>", "<｜User｜>",
                "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>", "<｜tool▁calls▁begin｜>",
                "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>",
                "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>",
                "<｜tool▁output▁end｜>", "<s>", "</s>")


def _json(name):
    return json.loads((SHARED / name).read_text())


def format_rows():
    """A few real rows of every SFT format (normalised)."""
    glaive = _json("glaive_toolcall_en_demo.json")
    kto = _json("kto_en_demo.json")
    alpaca = _json("alpaca_en_demo.json")
    return {
        "alpaca": [Normalizer("alpaca")(r) for r in alpaca[:2] + [next(r for r in alpaca if r["input"])]],
        "alpaca+system+history": [Normalizer("alpaca")({"instruction": "And 3+3?", "output": "6", "system": "Math tutor.",
                                                        "history": [["What is 2+2?", "4"]]})],
        "identity": [Normalizer("alpaca", substitute={"name": "Nova", "author": "Acme"})(r)
                     for r in _json("identity.json")[:2]],
        "sharegpt+tools": [Normalizer("sharegpt")(r) for r in (glaive[0], glaive[3], glaive[5])],
        "openai": [Normalizer("openai")(r) for r in [kto[0]] + [r for r in kto if len(r["messages"]) > 4][:1]],
        "dolly": [Normalizer("dolly")({"instruction": "Summarise.", "context": "A long text.", "response": "Short.",
                                       "category": "summarization"})],
        "self_instruct": [Normalizer("self_instruct")({"instruction": "Reverse: abc", "input": "", "output": "cba",
                                                       "task": "t"})],
        "prompt_completion": [Normalizer("prompt_completion")({"prompt": "Say hi.", "completion": "Hi!"})],
    }


ROWS = None


def rows(fmt):
    global ROWS
    if ROWS is None:
        ROWS = format_rows()
    return ROWS[fmt]


def tokenizers():
    from tiny_tokenizer import tiny_tokenizer

    return {"smollm2": smol_tokenizer(), "tiny": tiny_tokenizer(ALL_SPECIALS)}


TOKENIZERS = {}


def tokenizer(which):
    if not TOKENIZERS:
        TOKENIZERS.update(tokenizers())
    return TOKENIZERS[which]


def setup(template_key, which):
    tok = tokenizer(which)
    name = {"qwen3-nothink": "qwen3"}.get(template_key, template_key)
    cfg = {"name": name}
    if template_key == "qwen3-nothink":
        cfg["enable_thinking"] = False
    template = resolve_template(cfg, tok)
    return tok, Renderer.for_tokenizer(template, tok), cfg


def oracle_regions(template_key, text, n_turns, eos):
    headers, eot, final = ORACLE[template_key]
    eot, final = eot.format(eos=eos), final.format(eos=eos)
    regions, pos = [], 0
    for _ in range(n_turns):
        found = [m for m in (re.compile(h).search(text, pos) for h in headers) if m]
        start = min(found, key=lambda m: m.start()).end()
        end = text.index(eot, start) + len(eot)
        regions.append((start, end))
        pos = end
    if final and text[pos:].startswith(final):
        regions[-1] = (regions[-1][0], pos + len(final))
    return regions


def check_masks(tok, text, input_ids, labels, regions):
    """Tokens wholly inside an assistant output are trained, tokens wholly outside are not; a token
    that BPE merged across a boundary may go either way and is counted (at most one per boundary)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == input_ids
    inside = set()
    for s, e in regions:
        inside.update(range(s, e))
    straddling = 0
    for t, ((s, e), label) in enumerate(zip(enc["offset_mapping"], labels)):
        chars = set(range(s, max(e, s + 1)))
        if t == 0 or chars & inside and chars - inside:
            straddling += t > 0
            continue
        if chars <= inside:
            assert label != IGNORE, f"token {t} {text[s:e]!r} of an assistant output is not trained"
        else:
            assert label == IGNORE, f"token {t} {text[s:e]!r} is trained but lies outside every assistant output"
    assert straddling <= 2 * len(regions)
    for s, e in regions:  # the end-of-turn token itself carries loss
        last = max(t for t, (a, b) in enumerate(enc["offset_mapping"]) if a < e and b > s and text[a:b].strip())
        assert labels[last] != IGNORE
    return straddling


TEMPLATES = list(ORACLE)
FORMATS = ["alpaca", "alpaca+system+history", "identity", "sharegpt+tools", "openai", "dolly", "self_instruct",
           "prompt_completion"]


@pytest.mark.parametrize("which", ["smollm2", "tiny"])
@pytest.mark.parametrize("template_key", TEMPLATES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_trained_tokens_are_exactly_the_assistant_outputs(fmt, template_key, which):
    if template_key == "tokenizer" and which == "tiny":
        pass  # the tiny tokenizer's own template is plain ChatML: covered as well
    tok, renderer, cfg = setup(template_key, which)
    items = [Item(r, f"{fmt}:{i}") for i, r in enumerate(rows(fmt))]
    encoded = tokenize_items(items, "sft", tok, renderer, {"train_on": "assistant", **cfg},
                             {"max_length": 100_000}, progress=False)
    assert len(encoded.columns["input_ids"]) == len(items)
    if which == "tiny" or template_key in ("chatml", "tokenizer", "qwen2.5", "qwen3", "qwen3-nothink"):
        assert encoded.counts["eot_not_trained"] == 0  # the stop token is a real special token here
    for item, ids, labels in zip(items, encoded.columns["input_ids"], encoded.columns["labels"]):
        messages, tools, _ = renderer.prepare(item.row["messages"], item.row.get("tools"))
        text = renderer.render(messages, tools)
        n_turns = sum(1 for m in messages if m["role"] == "assistant")
        regions = oracle_regions(template_key, text, n_turns, tok.eos_token)
        for m, (s, e) in zip([m for m in messages if m["role"] == "assistant" and m["content"].strip()],
                             [r for r, m in zip(regions, [m for m in messages if m["role"] == "assistant"])
                              if m["content"].strip()]):
            assert m["content"].strip() in text[s:e]
        check_masks(tok, text, ids, labels, regions)


@pytest.mark.parametrize("template_key", ["chatml", "llama3", "gemma", "deepseek", "mistral"])
def test_last_assistant_and_all(template_key):
    tok, renderer, cfg = setup(template_key, "tiny")
    row = rows("sharegpt+tools")[0]
    items = [Item(row, "x")]
    last = tokenize_items(items, "sft", tok, renderer, {"train_on": "last_assistant"}, {"max_length": 100_000}, False)
    messages, tools, _ = renderer.prepare(row["messages"], row.get("tools"))
    text = renderer.render(messages, tools)
    regions = oracle_regions(template_key, text, sum(m["role"] == "assistant" for m in messages), tok.eos_token)
    assert len(regions) > 2
    check_masks(tok, text, last.columns["input_ids"][0], last.columns["labels"][0], regions[-1:])
    every = tokenize_items(items, "sft", tok, renderer, {"train_on": "all"}, {"max_length": 100_000}, False)
    labels = every.columns["labels"][0]
    assert labels[0] == IGNORE and labels[1:] == every.columns["input_ids"][0][1:]


@pytest.mark.parametrize("template_key", ["tokenizer", "qwen2.5", "llama3", "deepseek"])
def test_preference_and_kto_completions_are_the_assistant_outputs(template_key):
    tok, renderer, cfg = setup(template_key, "tiny")
    dpo = [Item(Normalizer("preference")(r), f"dpo:{i}") for i, r in enumerate(_json("dpo_en_demo.json")[:4])]
    enc = tokenize_items(dpo, "dpo", tok, renderer, cfg, {"max_length": 100_000}, False)
    for item, p, c, r in zip(dpo, enc.columns["prompt_input_ids"], enc.columns["chosen_input_ids"],
                             enc.columns["rejected_input_ids"]):
        for answer, ids in ((item.row["chosen"], c), (item.row["rejected"], r)):
            messages, tools, _ = renderer.prepare(item.row["messages"] + [answer], None)
            text = renderer.render(messages, tools)
            (s, e), = oracle_regions(template_key, text, sum(m["role"] == "assistant" for m in messages),
                                     tok.eos_token)[-1:]
            assert tok.decode(ids) == text[s:e]
            assert tok.decode(p) == text[:s]
    kto = [Item(Normalizer("kto")(r), f"kto:{i}") for i, r in enumerate(_json("kto_en_demo.json")[:4])]
    enc = tokenize_items(kto, "kto", tok, renderer, cfg, {"max_length": 100_000}, False)
    assert enc.columns["label"] == [r.row["label"] for r in kto]
    for item, p, c in zip(kto, enc.columns["prompt_input_ids"], enc.columns["completion_input_ids"]):
        text = renderer.render(*renderer.prepare(item.row["messages"], None)[:2])
        assert tok.decode(p) + tok.decode(c) == text
        assert tok.decode(c).startswith(item.row["messages"][-1]["content"].strip()[:20])


def test_same_ids_as_apply_chat_template_on_smollm2():
    tok, renderer, cfg = setup("tokenizer", "smollm2")
    for row in rows("alpaca") + rows("openai"):
        items = [Item(row, "x")]
        enc = tokenize_items(items, "sft", tok, renderer, {"train_on": "assistant"}, {"max_length": 100_000}, False)
        reference = tok.apply_chat_template(row["messages"], tokenize=True, return_dict=False,
                                            chat_template=resolve_template({"name": "tokenizer"}, tok).official)
        assert enc.columns["input_ids"][0] == list(reference)


def test_named_templates_cover_the_schema():
    import json as _json_mod
    from pathlib import Path

    schema = _json_mod.loads((Path(__file__).resolve().parents[1] / "runner/schemas/config.schema.json").read_text())
    names = set(schema["properties"]["template"]["properties"]["name"]["enum"])
    assert names - {"tokenizer", "jinja"} == set(NAMED)
    assert set(ORACLE) - {"qwen3-nothink"} == set(NAMED) | {"tokenizer"}


@pytest.mark.parametrize("which", ["smollm2", "tiny"])
@pytest.mark.parametrize("template_key", ["qwen2.5", "llama3", "gemma", "phi3", "deepseek"])
def test_templates_without_generation_markers_mask_by_incremental_rendering(template_key, which):
    """A user's own template (here trl's official ones, which have no {% generation %} markers,
    Phi-3's with an EOS rendered only after the final turn) is masked by incremental rendering."""
    from runner.data.templates import ChatTemplate, named_template

    tok = tokenizer(which)
    official = named_template(template_key)[0]
    renderer = Renderer.for_tokenizer(ChatTemplate("jinja", official, None, "file", {}), tok)
    assert not renderer.has_markers
    for fmt in FORMATS:
        items = [Item(r, fmt) for r in rows(fmt)]
        encoded = tokenize_items(items, "sft", tok, renderer, {}, {"max_length": 100_000}, progress=False)
        for item, ids, labels in zip(items, encoded.columns["input_ids"], encoded.columns["labels"]):
            messages, tools, _ = renderer.prepare(item.row["messages"], item.row.get("tools"))
            text = renderer.render(messages, tools)
            regions = oracle_regions(template_key, text, sum(m["role"] == "assistant" for m in messages),
                                     tok.eos_token)
            check_masks(tok, text, ids, labels, regions)
