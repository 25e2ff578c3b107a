"""Rows the configured format cannot read: the error says which format they look like
(`these rows look like alpaca: set format: alpaca`), for every format runner reads, and also when
on_bad_row: skip would skip every row."""

from __future__ import annotations

import json

import pytest

from runner.data.formats import FIELDS, Normalizer, RowError
from runner.data.readers import load_rows
from runner.errors import DataError
from test_data_hostile_rows import VALID
from test_data_support import SHARED

# Formats that read the same rows under another name.
SAME = {"self_instruct": "alpaca", "messages": "openai"}
SAMPLES = {**VALID, "self_instruct": VALID["alpaca"], "messages": VALID["openai"]}


def _reads(fmt, row) -> bool:
    try:
        Normalizer(fmt)(json.loads(json.dumps(row)))
    except RowError:
        return False
    return True


@pytest.mark.parametrize("actual", sorted(SAMPLES))
@pytest.mark.parametrize("configured", sorted(FIELDS))
def test_rows_of_one_format_under_another_say_what_they_look_like(tmp_path, actual, configured):
    row = SAMPLES[actual]
    if _reads(configured, row):
        return  # compatible layouts (alpaca rows under self_instruct, kto rows under openai, ...)
    path = tmp_path / "rows.jsonl"
    path.write_text((json.dumps(row) + "\n") * 3)
    with pytest.raises(DataError) as err:
        load_rows({"path": str(path), "format": configured})
    text = str(err.value)
    looks = SAME.get(actual, actual)
    assert f"(format {configured}); these rows look like {looks}: set format: {looks}" in text, text
    assert f"set format: {looks}" in err.value.hint
    with pytest.raises(DataError) as err:  # skipping every row would hide the same mistake
        load_rows({"path": str(path), "format": configured, "on_bad_row": "skip"})
    assert f"all 3 rows of dataset {path} are skipped (format {configured}); these rows look like {looks}" in str(err.value)


@pytest.mark.parametrize("name,configured,looks", [
    ("alpaca_en_demo.json", "sharegpt", "alpaca"),
    ("glaive_toolcall_en_demo.json", "alpaca", "sharegpt"),
    ("dpo_en_demo.json", "kto", "preference"),
    ("kto_en_demo.json", "alpaca", "kto"),
    ("c4_demo.jsonl", "openai", "text"),
    ("identity.json", "text", "alpaca"),
])
def test_real_datasets_under_the_wrong_format(name, configured, looks):
    with pytest.raises(DataError) as err:
        load_rows({"path": str(SHARED / name), "format": configured})
    assert f"these rows look like {looks}: set format: {looks}" in str(err.value)
