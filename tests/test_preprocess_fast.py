"""Rendering by conversation shape (runner.data.shapes) gives byte for byte what rendering every
row with the template gives: token ids, labels, counts, errors and the cache entry's files, for
real datasets, every named template, two real tokenizers, the train_on variants, length policies
and rows whose characters could change how a boundary renders or tokenizes. Templates that look
into contents are rendered row by row, and a difference found by the verification is caught."""

from __future__ import annotations

import json

import pytest

from runner.data import shapes
from runner.data.formats import Normalizer
from runner.data.render import Renderer
from runner.data.templates import resolve_template
from runner.data.tokenize import Item, tokenize_items
from runner.errors import UserError
from test_data_masking import ALL_SPECIALS, format_rows
from test_data_support import SHARED, smol_tokenizer, write_config

TEMPLATES = ["tokenizer", "chatml", "qwen2.5", "qwen3", "llama3", "llama2", "mistral", "gemma", "phi3",
             "deepseek", "vicuna", "alpaca"]
# Templates whose official training text only emits and concatenates message contents: these
# must actually take the shortcut (the others are checked for equal output all the same).
OPAQUE = {"tokenizer", "chatml", "qwen2.5", "phi3", "vicuna", "alpaca"}


def _tiny():
    from tiny_tokenizer import tiny_tokenizer

    return tiny_tokenizer(ALL_SPECIALS)


TOKENIZERS = {"smollm2": smol_tokenizer, "tiny": _tiny}
_loaded = {}


def tok(which):
    if which not in _loaded:
        _loaded[which] = TOKENIZERS[which]()
    return _loaded[which]


def renderer_for(tokenizer, name, source=None):
    if source is not None:
        return Renderer(source, {"eos_token": tokenizer.eos_token, "bos_token": tokenizer.bos_token},
                        name="test.jinja", added_tokens=tokenizer.get_added_vocab())
    return Renderer.for_tokenizer(resolve_template({"name": name}, tokenizer), tokenizer)


def both(items, tokenizer, renderer, train_on="assistant", seq=None, monkeypatch=None):
    """(by shape, row by row) results of tokenize_items, and how many rows went by shape."""
    seq = seq or {"max_length": 100_000}
    out = []
    before = shapes.ROWS_BY_SHAPE
    for enabled in (True, False):
        monkeypatch.setattr(shapes, "ENABLED", enabled)
        enc = tokenize_items(items, "sft", tokenizer, renderer, {"train_on": train_on}, seq, progress=False)
        out.append((enc.columns, enc.origins, dict(enc.counts), dict(enc.skipped), enc.rows_in))
        if enabled:
            by_shape = shapes.ROWS_BY_SHAPE - before
    return out[0], out[1], by_shape


def _json(name):
    return json.loads((SHARED / name).read_text())


def tricky_rows():
    """Contents that meet the template at characters BPE likes to merge, or that look like the
    template itself: leading/trailing spaces and newlines, unicode, special-token text, Jinja
    syntax, the shortcut's own sentinel characters, empty user turns, long multi-turn rows."""
    contents = [" leading space", "trailing space ", "\n\nnewlines first", "newlines last\n\n", "\t tab",
                "ünïcödé — 漢字 🙂", "<|im_end|>\n<|im_start|>user\nfake turn", "{{ messages }} {% if %}",
                "\ue000q7x0\ue001 sentinel", "  ", "a", "'s 're", "1234567", "\r\n", "<s> </s> [INST]"]
    rows = []
    for i, c in enumerate(contents):
        rows.append({"messages": [{"role": "user", "content": c}, {"role": "assistant", "content": c + " ok"}],
                     "tools": None})
        rows.append({"messages": [{"role": "system", "content": c}, {"role": "user", "content": "q" + c},
                                  {"role": "assistant", "content": c.strip() or "x"},
                                  {"role": "user", "content": ""},
                                  {"role": "assistant", "content": contents[(i + 1) % len(contents)]}],
                     "tools": None})
    return rows


def dataset_rows():
    alpaca = [Normalizer("alpaca")(r) for r in _json("alpaca_en_demo.json")[:150]]
    glaive = [Normalizer("sharegpt")(r) for r in _json("glaive_toolcall_en_demo.json")[:60]]
    system = [Normalizer("alpaca", system="You are terse.")(r) for r in _json("alpaca_en_demo.json")[150:180]]
    formats = [r for rows in format_rows().values() for r in rows]
    return alpaca + glaive + system + formats + tricky_rows()


@pytest.mark.parametrize("which", ["smollm2", "tiny"])
@pytest.mark.parametrize("template", TEMPLATES)
def test_by_shape_equals_row_by_row(template, which, monkeypatch):
    tokenizer = tok(which)
    renderer = renderer_for(tokenizer, template)
    items = [Item(r, f"rows:{i}") for i, r in enumerate(dataset_rows())]
    fast, exact, by_shape = both(items, tokenizer, renderer, monkeypatch=monkeypatch)
    assert fast == exact
    assert len(exact[0]["input_ids"]) == len(items)
    if template in OPAQUE:
        assert by_shape > len(items) // 2, f"only {by_shape} of {len(items)} rows went by shape"


@pytest.mark.parametrize("train_on", ["assistant", "last_assistant", "all"])
@pytest.mark.parametrize("template", ["tokenizer", "chatml", "llama3"])
def test_train_on_variants(template, train_on, monkeypatch):
    tokenizer = tok("smollm2")
    items = [Item(r, f"rows:{i}") for i, r in enumerate(dataset_rows()[120:])]
    fast, exact, by_shape = both(items, tokenizer, renderer_for(tokenizer, template), train_on, monkeypatch=monkeypatch)
    assert fast == exact
    if template in OPAQUE:
        assert by_shape > 0


@pytest.mark.parametrize("truncation", ["truncate", "drop", "split"])
def test_length_policies(truncation, monkeypatch):
    tokenizer = tok("smollm2")
    items = [Item(r, f"rows:{i}") for i, r in enumerate(dataset_rows()[:200])]
    seq = {"max_length": 48, "truncation": truncation}
    fast, exact, by_shape = both(items, tokenizer, renderer_for(tokenizer, "tokenizer"), seq=seq,
                                 monkeypatch=monkeypatch)
    assert fast == exact and by_shape > 0
    assert fast[2].get("truncated" if truncation == "truncate" else "dropped_too_long" if truncation == "drop"
                       else "split")


# Templates that look into message contents, or let them leave by routes a probe cannot follow.
PEEKING = {
    "trim": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}",
    "membership": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if 'fake' in m['content'] %}FAKE{% endif %}"
                  "{{ m['content'] }}<|im_end|>\n{% endfor %}",
    "split": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'].split('\n')[-1] }}<|im_end|>\n"
             "{% endfor %}",
    "tojson": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | tojson }}<|im_end|>\n{% endfor %}",
    "tilde": "{% for m in messages %}{% set c = m['content'] ~ '' %}<|im_start|>{{ m['role'] }}\n"
             "{% if c.startswith(' ') %}SPACE{% endif %}{{ c }}<|im_end|>\n{% endfor %}",
    "test": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is upper %}UP{% endif %}"
            "{{ m['content'] }}<|im_end|>\n{% endfor %}",
    "length": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{{ m['content'] | length }}"
              "<|im_end|>\n{% endfor %}",
    "compare": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] == 'a' %}A{% endif %}"
               "{{ m['content'] }}<|im_end|>\n{% endfor %}",
    # Contents captured as plain text and changed there, or read by C code: the probe sees no access.
    "filter_block": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% filter trim %}{{ m['content'] }}"
                    "{% endfilter %}<|im_end|>\n{% endfor %}",
    "filter_lower": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% filter lower %}{{ m['content'] }}"
                    "{% endfilter %}<|im_end|>\n{% endfor %}",
    "set_block": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% set c %}{{ m['content'] }}{% endset %}"
                 "{{ c | trim }}<|im_end|>\n{% endfor %}",
    "macro": "{% macro say(x) %}{{ x }}{% endmacro %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
             "{{ say(m['content']) | trim }}<|im_end|>\n{% endfor %}",
    "wordcount": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{{ m['content'] | wordcount }}"
                 "<|im_end|>\n{% endfor %}",
    "in_literal": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] in 'yes no' %}YN{% endif %}"
                  "{{ m['content'] }}<|im_end|>\n{% endfor %}",
    "is_in": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is in 'yes no' %}YN{% endif %}"
             "{{ m['content'] }}<|im_end|>\n{% endfor %}",
    "in_variable": "{% set words = 'yes no' %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                   "{% if m['content'] in words %}YN{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}",
    "in_chained": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if '' < m['content'] in 'yes no' %}YN"
                  "{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}",
}


def _pair(user, assistant):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], "tools": None}


# One shape whose first rows (the verified ones) read the same either way: only the shape's own proof
# can keep the later rows right.
BENIGN_FIRST = [_pair("hi", "fine"), _pair("hello", "good"), _pair("yo", "ok"), _pair("hey", "sure"),
                _pair(" Leading Space ", "Two Words"), _pair("5", "yes"), _pair("a b c", "UP\n")]


@pytest.mark.parametrize("kind", sorted(PEEKING))
def test_templates_that_look_into_contents_render_row_by_row(kind, monkeypatch):
    tokenizer = tok("tiny")
    renderer = renderer_for(tokenizer, None, PEEKING[kind])
    for rows in (tricky_rows() + dataset_rows()[:20], BENIGN_FIRST):
        items = [Item(r, f"rows:{i}") for i, r in enumerate(rows)]
        fast, exact, by_shape = both(items, tokenizer, renderer, monkeypatch=monkeypatch)
        assert fast == exact
        assert by_shape == 0


def test_an_opaque_custom_template_goes_by_shape(monkeypatch):
    """The control for the test above: the same template without the peeking."""
    tokenizer = tok("tiny")
    source = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] %}{{ m['content'] }}{% endif %}"
              "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    items = [Item(r, f"rows:{i}") for i, r in enumerate(tricky_rows())]
    fast, exact, by_shape = both(items, tokenizer, renderer_for(tokenizer, None, source), monkeypatch=monkeypatch)
    assert fast == exact
    assert by_shape == len(items) - 1  # the first row renders the template's capability probes


def test_a_difference_found_by_verification_is_caught():
    """A shape whose fixed text were wrong is caught by the next verified row."""
    tokenizer = tok("tiny")
    renderer = renderer_for(tokenizer, "chatml")
    renderer.caps  # noqa: B018 (prepare's probes)
    sr = shapes.ShapeRenderer(renderer, "assistant")
    row = dataset_rows()[0]
    messages, tools, _ = renderer.prepare(row["messages"], row["tools"])
    assert sr.spans(messages, tools) == renderer.spans(messages, tools, "assistant")
    key = next(iter(sr.shapes))
    good = sr.shapes[key]
    sr.shapes[key] = shapes._Shape([p + " " if isinstance(p, str) else p for p in good.parts], good.bounds)
    sr.seen[key] = shapes.VERIFY_EVERY - 1
    with pytest.raises(shapes.ShapeMismatch):
        sr.spans(messages, tools)


def test_rows_the_template_refuses_give_the_same_error(monkeypatch):
    """mistral's template refuses roles that do not alternate: the error names the same rows."""
    tokenizer = tok("tiny")
    renderer = renderer_for(tokenizer, "mistral")
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "tools": None}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"},
                        {"role": "assistant", "content": "yo"}], "tools": None}
    items = [Item(good, "data.json:3"), Item(bad, "data.json:7"), Item(good, "data.json:9"), Item(bad, "data.json:12")]
    errors = []
    for enabled in (True, False):
        monkeypatch.setattr(shapes, "ENABLED", enabled)
        with pytest.raises(UserError) as e:
            tokenize_items(items, "sft", tokenizer, renderer, {}, {"max_length": 1000}, progress=False)
        errors.append(str(e.value))
    assert errors[0] == errors[1]
    assert "data.json:7" in errors[0] and "data.json:12" in errors[0]


def test_cache_entry_is_byte_identical(tmp_path, monkeypatch):
    """The whole pipeline on real files (alpaca with a system prompt, glaive with tools): the
    cache entries written both ways hold the same files, byte for byte."""
    from runner.data import build_datasets
    from runner.plan.resolve import make_plan

    datasets = [{"path": str(SHARED / "alpaca_en_demo.json"), "format": "alpaca", "system": "Be brief."},
                {"path": str(SHARED / "glaive_toolcall_en_demo.json"), "format": "sharegpt"}]
    files = []
    for enabled in (True, False):
        monkeypatch.setattr(shapes, "ENABLED", enabled)
        (tmp_path / str(enabled)).mkdir()
        cfg = write_config(tmp_path / str(enabled), datasets, data={"cache_dir": str(tmp_path / f"cache{enabled}")},
                           val_size=0.05)
        plan = make_plan(cfg)
        before = shapes.ROWS_BY_SHAPE
        prepared = build_datasets(plan, smol_tokenizer(), progress=False)
        assert prepared.stats["cache"] == "built"
        if enabled:
            assert shapes.ROWS_BY_SHAPE - before >= 999
        entry = tmp_path / f"cache{enabled}" / plan.hashes.data
        files.append({p.relative_to(entry).as_posix(): p.read_bytes() for p in sorted(entry.rglob("*")) if p.is_file()})
    assert files[0].keys() == files[1].keys() and len(files[0]) > 3
    assert files[0] == files[1]


def test_only_young_objects_are_collected_while_the_splits_are_built():
    import gc
    import weakref

    from runner.data.build import NEVER, YOUNG_THRESHOLD, young_collections_only

    class Node:
        pass

    before = gc.get_threshold()
    with young_collections_only():
        assert gc.get_threshold() == (YOUNG_THRESHOLD, NEVER, NEVER)
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle, as a refused row's traceback makes
        gone = weakref.ref(a)
        del a, b
        kept = [[i] for i in range(3 * YOUNG_THRESHOLD)]  # allocations that trigger young collections
        assert gone() is None and len(kept) == 3 * YOUNG_THRESHOLD
    assert gc.get_threshold() == before
    with pytest.raises(UserError), young_collections_only():
        raise UserError("a data error in the middle of a build")
    assert gc.get_threshold() == before
