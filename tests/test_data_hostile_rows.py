"""Hostile rows, field by field: every field (and every nested key) of a valid row of every format
replaced by a value of the wrong type, removed, or made of JSON nested ~100k levels deep. Each
mutated row is either read (and then renders and tokenizes without an exception other than a bad
row) or refused as a bad row (RowError, reported with file:line): never a TypeError, KeyError or
RecursionError escaping as a traceback."""

from __future__ import annotations

import copy
import json

import pytest

from runner.data.formats import FIELDS, Normalizer, RowError
from runner.data.render import Renderer
from runner.data.templates import resolve_template
from runner.data.tokenize import Item, tokenize_items
from runner.errors import UserError

DEEP_TEXT = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT_TEXT = '{"a": ' * 100_000 + "1" + "}" * 100_000


def _deep_list(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


# 3,000 levels: past the JSON parser's recursion limit (the 100k-deep texts have tests of their own).
WRONG = [5, 1.5, True, None, [1], [], {}, {"a": 1}, "", " ", "x", "[1]", '{"a": 1}', "[" * 3000 + "]" * 3000,
         '{"a": ' * 3000 + "1" + "}" * 3000,
         _deep_list(200), [[1, 2]], [{"from": 5}], [{"role": "user"}]]

CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
TOOLS = [{"name": "get_weather", "description": "weather", "parameters": {"type": "object", "properties": {}}}]
VALID = {
    "alpaca": {"instruction": "Say hi", "input": "now", "output": "Hi!", "system": "Be kind.",
               "history": [["a", "b"]]},
    "dolly": {"instruction": "Sum up", "context": "A text.", "response": "Short.", "system": "s"},
    "self_instruct": {"instruction": "Say hi", "input": "", "output": "Hi!"},
    "prompt_completion": {"prompt": "2+2?", "completion": "4", "system": "s"},
    "sharegpt": {"conversations": [{"from": "human", "value": "weather?"},
                                   {"from": "function_call", "value": json.dumps(CALL)},
                                   {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}],
                 "tools": json.dumps(TOOLS), "system": "s"},
    "openai": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "weather?"},
                            {"role": "assistant", "content": "",
                             "tool_calls": [{"type": "function",
                                             "function": {"name": "get_weather", "arguments": '{"city": "P"}'}}]},
                            {"role": "tool", "name": "get_weather", "content": "sunny"},
                            {"role": "assistant", "content": "Sunny."}],
               "tools": TOOLS},
    "text": {"text": "Some document."},
    "preference": {"conversations": [{"from": "human", "value": "hi"}], "chosen": {"from": "gpt", "value": "Hello!"},
                   "rejected": {"from": "gpt", "value": "Go away."}, "system": "s"},
    "kto": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}],
            "label": True},
}
# The other shapes of the two preference formats.
VALID_MORE = [
    ("preference", {"prompt": "hi", "chosen": "Hello!", "rejected": "Go away."}),
    ("preference", {"instruction": "hi", "input": "x", "chosen": "Hello!", "rejected": "No.", "history": [["a", "b"]]}),
    ("preference", {"prompt": [{"role": "user", "content": "hi"}],
                    "chosen": [{"role": "assistant", "content": "Hello!"}],
                    "rejected": [{"role": "assistant", "content": "No."}]}),
    ("kto", {"prompt": "hi", "completion": "Hello!", "label": "false"}),
    ("prompt_completion", {"prompt": [{"role": "user", "content": "hi"}],
                           "completion": [{"role": "assistant", "content": "Hello!"}]}),
]
STAGE = {"preference": "dpo", "kto": "kto", "text": "pt"}


def _paths(value, prefix=()):
    """Every place in a row: its keys and list items, nested."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _replace(row, path, value):
    row = copy.deepcopy(row)
    node = row
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return row


_DELETE = object()


def mutations(fmt, row):
    for path in _paths(row):
        for value in WRONG + [_DELETE]:
            yield _replace(row, path, value)
    for value in WRONG:  # an extra field, and the whole row of the wrong type
        yield {**row, "extra": value}
        yield value


def _cases():
    return [(fmt, row) for fmt, row in VALID.items()] + VALID_MORE + [("messages", VALID["openai"])]


@pytest.mark.parametrize("fmt,row", _cases(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_field_of_the_wrong_type_is_a_bad_row_or_read(fmt, row):
    from tiny_tokenizer import tiny_tokenizer

    normalise = Normalizer(fmt, substitute={"x": "y"})
    normalise(copy.deepcopy(row))  # the valid row itself is read
    kept, crashes = [], []
    for n, mutated in enumerate(mutations(fmt, row)):
        try:
            kept.append(Item(normalise(mutated), f"row {n}", "skip"))
        except RowError:
            continue
        except Exception as e:  # noqa: BLE001 - what the test is looking for
            crashes.append(f"{json.dumps(mutated)[:200]}: {type(e).__name__}: {e}")
    assert not crashes, "\n".join(crashes[:5])
    assert kept, "no mutation was readable: the test would prove nothing about rendering"
    tok = tiny_tokenizer()
    seq = {"max_length": 64, "truncation": "truncate"}
    for template in ("chatml", "qwen2.5"):
        renderer = Renderer.for_tokenizer(resolve_template({"name": template}, tok), tok)
        for item in kept:
            try:
                tokenize_items([item], STAGE.get(fmt, "sft"), tok, renderer, {}, seq, progress=False)
            except UserError:
                continue
            except Exception as e:  # noqa: BLE001
                crashes.append(f"{template} {json.dumps(item.row)[:200]}: {type(e).__name__}: {e}")
    assert not crashes, "\n".join(crashes[:5])


@pytest.mark.parametrize("field,fmt,row", [
    ("conversations", "sharegpt", {"conversations": DEEP_TEXT}),
    ("tools", "sharegpt", {**VALID["sharegpt"], "tools": DEEP_TEXT}),
    ("message 2: tool call", "sharegpt",
     {"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": DEEP_OBJECT_TEXT},
                        {"from": "observation", "value": "x"}, {"from": "gpt", "value": "ok"}]}),
    ("message 2: tool call arguments", "openai",
     {"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": DEEP_TEXT}}]},
                   {"role": "tool", "content": "x"}, {"role": "assistant", "content": "ok"}]}),
    ("history", "alpaca", {"instruction": "a", "output": "b", "history": DEEP_TEXT}),
    ("history", "preference", {"instruction": "a", "chosen": "b", "rejected": "c", "history": DEEP_TEXT}),
])
def test_json_nested_100k_deep_in_a_field_names_file_and_line(tmp_path, field, fmt, row):
    from runner.data.readers import load_rows
    from runner.errors import DataError

    data = tmp_path / "deep.jsonl"
    data.write_text(json.dumps(VALID.get(fmt, VALID["alpaca"]) if fmt != "preference" else VALID_MORE[1][1]) + "\n"
                    + json.dumps(row) + "\n")
    with pytest.raises(DataError) as err:
        load_rows({"path": str(data), "format": fmt})
    assert f"{data}:2: " in str(err.value) and "nested more than 100 levels deep" in str(err.value)
    assert field in str(err.value)
    skipped = load_rows({"path": str(data), "format": fmt, "on_bad_row": "skip"})
    assert len(skipped.rows) == 1 and dict(skipped.skipped) == {"nested too deeply": 1}


@pytest.mark.parametrize("side,value", [("chosen", 5), ("chosen", [1]), ("rejected", 2.5), ("rejected", [[1]]),
                                        ("chosen", True), ("rejected", [])])
def test_preference_answer_of_the_wrong_type(tmp_path, side, value):
    from runner.data.readers import load_rows
    from runner.errors import DataError

    data = tmp_path / "pref.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r", side: value}) + "\n")
    with pytest.raises(DataError) as err:
        load_rows({"path": str(data), "format": "preference"})
    assert f"{data}:1: field '{side}' must be a string or one assistant message" in str(err.value)
