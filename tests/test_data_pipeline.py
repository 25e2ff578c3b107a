"""Every file of ../shared/data through build_datasets with a config of a few lines (real YAML,
real SmolLM2 tokenizer): row counts, stage columns, and exact rendered samples."""

from __future__ import annotations

import json

import pytest

from runner.data import build_datasets
from test_data_support import SHARED, plan_for, smol_tokenizer

SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def build(tmp_path, datasets, **sections):
    sections.setdefault("data", {})["shuffle"] = False
    plan = plan_for(tmp_path, datasets, **sections)
    return build_datasets(plan, smol_tokenizer(), progress=False)


def decode(ids):
    return smol_tokenizer().decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def trained_text(row):
    return decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])


def test_alpaca_and_identity_exact_samples(tmp_path):
    prepared = build(tmp_path, [
        {"path": str(SHARED / "alpaca_en_demo.json"), "format": "alpaca"},
        {"path": str(SHARED / "identity.json"), "format": "alpaca", "substitute": {"name": "Nova", "author": "Acme"}},
    ], sequence={"max_length": 4096})
    assert len(prepared.train) == 999 + 91 and prepared.eval is None
    assert prepared.stats["datasets"][0]["rows"] == 999 and prepared.stats["datasets"][1]["rows"] == 91
    first = json.loads((SHARED / "alpaca_en_demo.json").read_text())[0]
    row = prepared.train[0]
    assert decode(row["input_ids"]) == (SMOL_SYSTEM + "<|im_start|>user\nDescribe a process of making crepes.<|im_end|>\n"
                                        "<|im_start|>assistant\n" + first["output"] + "<|im_end|>\n")
    assert trained_text(row) == first["output"] + "<|im_end|>\n"
    identity = prepared.train[999]
    assert decode(identity["input_ids"]) == (
        SMOL_SYSTEM + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        "Hello! I am Nova, an AI assistant developed by Acme. How can I assist you today?<|im_end|>\n")


def test_glaive_toolcall_with_qwen25_template(tmp_path):
    prepared = build(tmp_path, [{"path": str(SHARED / "glaive_toolcall_en_demo.json"), "format": "sharegpt"}],
                     template={"name": "qwen2.5"}, sequence={"max_length": 4096})
    # Row 244 holds an 11k-token user turn: truncated to 4096 tokens, no assistant token is left, so
    # the row is dropped, and counted.
    assert prepared.stats["train"]["counts"] == {"truncated": 1, "dropped_no_trained_tokens": 1}
    assert len(prepared.train) == 299
    text = decode(prepared.train[0]["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                           "\n\n# Tools\n\nYou may call one or more functions")
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "search_recipes", "arguments": {"ingredients": '
            '["chicken", "bell peppers", "rice"]}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n'
            '{"recipes": [{"name": "Chicken and Bell Pepper Stir Fry"') in text
    trained = trained_text(prepared.train[0])
    assert '<tool_call>\n{"name": "search_recipes"' in trained and "<tool_response>" not in trained
    assert trained.count("<|im_end|>") == 4  # four assistant turns, each with its end-of-turn token


def test_glaive_with_smollm2_template_renders_calls_as_text(tmp_path):
    prepared = build(tmp_path, [{"path": str(SHARED / "glaive_toolcall_en_demo.json"), "format": "sharegpt"}],
                     sequence={"max_length": 16384})
    counts = prepared.stats["train"]["counts"]
    assert counts["tool_calls_as_text"] == 153 and counts["tools_in_system"] == 191  # rows, not silently dropped
    text = decode(prepared.train[0]["input_ids"])
    assert '<|im_start|>assistant\n{"name": "search_recipes", "arguments": {"ingredients": ["chicken", "bell peppers", ' \
           '"rice"]}}<|im_end|>\n<|im_start|>tool\n{"recipes"' in text


def test_dpo_demo(tmp_path):
    prepared = build(tmp_path, [{"path": str(SHARED / "dpo_en_demo.json"), "format": "preference"}],
                     training={"stage": "dpo"}, sequence={"max_length": 8192})
    assert len(prepared.train) == 300
    assert set(prepared.train.column_names) == {"prompt_input_ids", "chosen_input_ids", "rejected_input_ids"}
    raw = json.loads((SHARED / "dpo_en_demo.json").read_text())[0]
    row = prepared.train[0]
    assert decode(row["prompt_input_ids"]) == (SMOL_SYSTEM + "<|im_start|>user\n" + raw["conversations"][0]["value"]
                                               + "<|im_end|>\n<|im_start|>assistant\n")
    assert decode(row["chosen_input_ids"]) == raw["chosen"]["value"] + "<|im_end|>\n"
    assert decode(row["rejected_input_ids"]) == raw["rejected"]["value"] + "<|im_end|>\n"


def test_kto_demo(tmp_path):
    prepared = build(tmp_path, [{"path": str(SHARED / "kto_en_demo.json"), "format": "kto"}],
                     training={"stage": "kto"}, template={"name": "chatml"}, sequence={"max_length": 8192})
    assert len(prepared.train) == 300 and sum(prepared.train["label"]) == 150
    raw = json.loads((SHARED / "kto_en_demo.json").read_text())[0]
    row = prepared.train[0]
    assert decode(row["prompt_input_ids"]) == ("<|im_start|>user\n" + raw["messages"][0]["content"] +
                                               "<|im_end|>\n<|im_start|>assistant\n")
    assert decode(row["completion_input_ids"]) == raw["messages"][1]["content"] + "<|im_end|>\n"


@pytest.mark.parametrize("name,rows", [("c4_demo.jsonl", 300), ("wiki_demo.txt", 30)])
def test_pretraining_text(tmp_path, name, rows):
    prepared = build(tmp_path, [{"path": str(SHARED / name), "format": "text"}], training={"stage": "pt"},
                     sequence={"max_length": 100_000})
    assert len(prepared.train) == rows
    first = prepared.train[0]
    assert first["labels"][1:] == first["input_ids"][1:] and first["input_ids"][-1] == smol_tokenizer().eos_token_id
    line = (SHARED / name).read_text().splitlines()[0]
    expected = json.loads(line)["text"] if name.endswith(".jsonl") else line
    assert decode(first["input_ids"]) == expected + "<|im_end|>"


def test_mixing_val_split_and_packing(tmp_path):
    prepared = build(tmp_path, [
        {"path": str(SHARED / "alpaca_en_demo.json"), "format": "alpaca", "num_samples": 100},
        {"path": str(SHARED / "identity.json"), "format": "alpaca", "weight": 2.0},
    ], val_size=0.1, sequence={"max_length": 512, "packing": True}, data={"shuffle": True})
    train, evaluation, stats = prepared.train, prepared.eval, prepared.stats
    assert stats["train"]["packing"]["samples"] + stats["eval"]["packing"]["samples"] == 100 + 182 - \
        stats["train"]["counts"].get("dropped_no_trained_tokens", 0)
    assert stats["eval"]["packing"]["samples"] == 28
    assert set(train.column_names) == {"input_ids", "labels", "position_ids"}
    assert stats["train"]["packing"]["efficiency"] > 0.9
    assert all(len(ids) <= 512 for ids in train["input_ids"])
