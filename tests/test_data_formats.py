"""Readers and formats: every file of ../shared/data loads with a few-line config; column and
role mapping, placeholders, file types, folders, hub ids offline, mixing and validation split."""

from __future__ import annotations

import json
import time

import pytest

from runner.data.formats import Normalizer, RowError
from runner.data.mixing import mix, split_validation
from runner.data.readers import load_rows
from runner.errors import DataError, UserError
from test_data_support import SHARED


def roles(row):
    return [m["role"] for m in row["messages"]]


def test_alpaca_demo():
    ds = load_rows({"path": str(SHARED / "alpaca_en_demo.json"), "format": "alpaca"})
    assert len(ds.rows) == ds.rows_read == 999
    assert all(roles(r) == ["user", "assistant"] for r in ds.rows)
    raw = json.loads((SHARED / "alpaca_en_demo.json").read_text())
    with_input = next(i for i, r in enumerate(raw) if r["input"])
    assert ds.rows[with_input]["messages"][0]["content"] == raw[with_input]["instruction"] + "\n" + raw[with_input]["input"]
    assert ds.rows[0]["messages"][0]["content"] == "Describe a process of making crepes."
    assert ds.origins[0].endswith("alpaca_en_demo.json:2")  # the array's first element starts on line 2


def test_identity_placeholders_filled():
    ds = load_rows({"path": str(SHARED / "identity.json"), "format": "alpaca",
                    "substitute": {"name": "Nova", "author": "Acme Labs"}})
    assert len(ds.rows) == 91
    text = json.dumps(ds.rows)
    assert "{{name}}" not in text and "{{author}}" not in text
    assert ds.rows[0]["messages"][1]["content"] == \
        "Hello! I am Nova, an AI assistant developed by Acme Labs. How can I assist you today?"


def test_glaive_toolcall_sharegpt():
    ds = load_rows({"path": str(SHARED / "glaive_toolcall_en_demo.json"), "format": "sharegpt"})
    assert len(ds.rows) == 300
    first = ds.rows[0]
    assert roles(first) == ["user", "assistant", "user", "assistant", "tool", "assistant", "user", "assistant"]
    call = first["messages"][3]
    assert call["content"] == "" and call["tool_calls"] == [{"type": "function", "function": {
        "name": "search_recipes", "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]}}}]
    assert first["tools"][0]["type"] == "function" and first["tools"][0]["function"]["name"] == "search_recipes"
    assert sum(1 for r in ds.rows if r["tools"]) == 191  # the rest have tools "[]"
    raw = json.loads((SHARED / "glaive_toolcall_en_demo.json").read_text())
    calls = sum(1 for r in raw for m in r["conversations"] if m["from"] == "function_call")
    assert sum(1 for r in ds.rows for m in r["messages"] if m.get("tool_calls")) == calls == 211


def test_dpo_preference_sharegpt():
    ds = load_rows({"path": str(SHARED / "dpo_en_demo.json"), "format": "preference"})
    assert len(ds.rows) == 300
    assert sum(1 for r in ds.rows if r["messages"][0]["role"] == "system") == 80
    assert all(r["messages"][-1]["role"] == "user" for r in ds.rows)
    assert all(r["chosen"]["role"] == r["rejected"]["role"] == "assistant" for r in ds.rows)
    raw = json.loads((SHARED / "dpo_en_demo.json").read_text())
    assert ds.rows[0]["chosen"]["content"] == raw[0]["chosen"]["value"]


def test_kto_openai_roles():
    ds = load_rows({"path": str(SHARED / "kto_en_demo.json"), "format": "kto"})
    assert len(ds.rows) == 300
    assert sum(r["label"] for r in ds.rows) == 150
    assert all(r["messages"][-1]["role"] == "assistant" for r in ds.rows)


def test_text_jsonl_and_txt():
    c4 = load_rows({"path": str(SHARED / "c4_demo.jsonl"), "format": "text"})
    wiki = load_rows({"path": str(SHARED / "wiki_demo.txt"), "format": "text"})
    assert len(c4.rows) == 300 and len(wiki.rows) == 30
    assert wiki.rows[0]["text"].startswith("Anarchism is a political philosophy")
    assert c4.origins[4].endswith("c4_demo.jsonl:5")


def test_flat_and_alpaca_style_preference():
    flat = Normalizer("preference")({"prompt": "2+2?", "chosen": "4", "rejected": "5"})
    assert flat["messages"] == [{"role": "user", "content": "2+2?"}]
    assert flat["chosen"]["content"] == "4" and flat["rejected"]["content"] == "5"
    alpaca = Normalizer("preference")({"instruction": "Add", "input": "2 and 2", "chosen": "4", "rejected": "5"})
    assert alpaca["messages"][0]["content"] == "Add\n2 and 2"
    trl_style = Normalizer("preference")({"prompt": [{"role": "user", "content": "hi"}],
                                          "chosen": [{"role": "assistant", "content": "hello"}],
                                          "rejected": [{"role": "assistant", "content": "go away"}]})
    assert trl_style["chosen"]["content"] == "hello"


def test_dolly_self_instruct_prompt_completion():
    dolly = Normalizer("dolly")({"instruction": "Summarise", "context": "Long text", "response": "Short",
                                 "category": "summarization"})
    assert dolly["messages"] == [{"role": "user", "content": "Summarise\nLong text"},
                                 {"role": "assistant", "content": "Short"}]
    si = Normalizer("self_instruct")({"instruction": "Do X", "input": "", "output": "Done", "task": "t1"})
    assert roles(si) == ["user", "assistant"] and si["messages"][0]["content"] == "Do X"
    pc = Normalizer("prompt_completion")({"prompt": "Q", "completion": "A"})
    assert pc["messages"][1] == {"role": "assistant", "content": "A"}


def test_columns_and_roles_mapping(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps({"dialog": [{"speaker": "person", "text": "hi"},
                                                      {"speaker": "bot", "text": "hello"}], "sys": "Be nice"})
                              for _ in range(3)))
    ds = load_rows({"path": str(path), "format": "sharegpt",
                    "columns": {"messages": "dialog", "role": "speaker", "content": "text", "system": "sys"},
                    "roles": {"person": "user", "bot": "assistant"}})
    assert len(ds.rows) == 3
    assert ds.rows[0]["messages"] == [{"role": "system", "content": "Be nice"}, {"role": "user", "content": "hi"},
                                      {"role": "assistant", "content": "hello"}]


def test_csv_parquet_and_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.csv").write_text('question,answer\n"What, exactly?","This.\nTwo lines"\nWhy?,Because\n')
    pq.write_table(pa.table({"question": ["P1", "P2"], "answer": ["A1", "A2"]}), folder / "b.parquet")
    (folder / "c.jsonl").write_text(json.dumps({"question": "J", "answer": "K"}) + "\n")
    (folder / "notes.md").write_text("ignored: not a data file")
    ds = load_rows({"path": str(folder), "format": "alpaca", "columns": {"instruction": "question", "output": "answer"}})
    assert [r["messages"][0]["content"] for r in ds.rows] == ["What, exactly?", "Why?", "P1", "P2", "J"]
    assert ds.rows[0]["messages"][1]["content"] == "This.\nTwo lines"
    assert ds.origins[1].endswith("a.csv:4") and ds.origins[2].endswith("b.parquet:row 1")


def test_hub_id_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        load_rows({"path": "someone/some-dataset", "format": "alpaca"})
    assert time.monotonic() - start < 1.0


def test_hub_id_fails_fast_without_network(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(UserError, match="cannot be reached"):
        load_rows({"path": "someone/some-dataset", "format": "alpaca"})


def test_missing_local_file_is_not_mistaken_for_hub(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_rows({"path": str(tmp_path / "nope.json"), "format": "alpaca"})


def test_bad_rows_stop_or_skip(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{oops\n{"instruction": "c"}\n{"instruction": "d", "output": "e"}\n')
    with pytest.raises(DataError) as err:
        load_rows({"path": str(path), "format": "alpaca"})
    text = str(err.value)
    assert "2 malformed row(s)" in text and f"{path}:2: invalid JSON line" in text
    assert f"{path}:3: missing field 'output'" in text
    ds = load_rows({"path": str(path), "format": "alpaca", "on_bad_row": "skip"})
    assert len(ds.rows) == 2 and ds.skipped == {"invalid JSON": 1, "missing field": 1}


def test_unknown_role_and_empty_assistant_are_rejected():
    n = Normalizer("sharegpt")
    with pytest.raises(RowError, match="unknown role 'narrator'"):
        n({"conversations": [{"from": "narrator", "value": "x"}, {"from": "gpt", "value": "y"}]})
    with pytest.raises(RowError, match="empty assistant turn"):
        n({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "  "}]})


def test_mixing_num_samples_weight_and_seed():
    a = [("a", i) for i in range(10)]
    b = [("b", i) for i in range(4)]
    mixed = mix([(a, {"num_samples": 25}), (b, {"weight": 0.5})], seed=3, shuffle=True)
    assert sum(1 for x in mixed if x[0] == "a") == 25 and sum(1 for x in mixed if x[0] == "b") == 2
    assert {x for x in mixed if x[0] == "a"} == set(a)  # 25 from 10 rows: every row at least twice
    assert mixed == mix([(a, {"num_samples": 25}), (b, {"weight": 0.5})], seed=3, shuffle=True)
    assert mixed != mix([(a, {"num_samples": 25}), (b, {"weight": 0.5})], seed=4, shuffle=True)
    train, val = split_validation(list(range(100)), 0.1, seed=0)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    assert split_validation(list(range(100)), 7, seed=0)[1].__len__() == 7


def test_message_keys_follow_the_file_whatever_the_format_name():
    """LLaMA-Factory layouts mix the names: openai-style {role, content} under `conversations`,
    sharegpt-style {from, value} under `messages`."""
    openai_keys = {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    sharegpt_keys = {"messages": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "label": False}
    expected = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert Normalizer("sharegpt")(openai_keys)["messages"] == expected
    assert Normalizer("kto")(sharegpt_keys)["messages"] == expected
    assert Normalizer("kto", columns={"messages": "messages"})(sharegpt_keys)["messages"] == expected
