"""The malformed-data corpus (tests/fixtures/bad_data): each file stops preprocessing with the
documented `file:line: reason` and the total count, and `on_bad_row: skip` gives exact counts,
both through the reader and through `runner preprocess` (exit 2, no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runner.data.readers import load_rows
from runner.errors import DataError

CORPUS = Path(__file__).parent / "fixtures" / "bad_data"
EXPECTED = yaml.safe_load((CORPUS / "expected.yaml").read_text())


def test_corpus_is_complete():
    files = {p.name for p in CORPUS.iterdir() if p.name != "expected.yaml"}
    assert files == set(EXPECTED) and len(files) >= 15


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_file_stops_with_file_line_reason(name):
    spec = EXPECTED[name]
    with pytest.raises(DataError) as err:
        load_rows({"path": str(CORPUS / name), "format": spec["format"]})
    text = str(err.value).replace(str(CORPUS) + "/", "")
    assert f"{spec['bad']} malformed row(s)" in text
    assert "\n  " + spec["error"] in text
    for line in spec.get("also", []):
        assert "\n  " + line in text
    assert err.value.where.endswith(spec["error"].split(": ")[0])
    assert "on_bad_row: skip" in err.value.hint


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_skip_counts_exactly(name):
    spec = EXPECTED[name]
    loaded = load_rows({"path": str(CORPUS / name), "format": spec["format"], "on_bad_row": "skip"})
    assert len(loaded.rows) == spec["kept"]
    assert dict(loaded.skipped) == spec["skipped"]
    assert len(loaded.rows) + sum(loaded.skipped.values()) == loaded.rows_read


def test_preprocess_reports_bad_rows_and_skip_counts(tmp_path, capsys):
    from runner.cli import main
    from test_data_support import tiny_model_dir, write_config

    model = {"path": str(tiny_model_dir(tmp_path))}
    ds = {"path": str(CORPUS / "many_bad.jsonl"), "format": "alpaca"}
    cfg = write_config(tmp_path, [ds], model=model, template={"name": "chatml"})
    assert main(["preprocess", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "7 malformed row(s)" in err and "many_bad.jsonl:2: invalid JSON line" in err and "Traceback" not in err
    cfg = write_config(tmp_path, [{**ds, "on_bad_row": "skip"}], model=model, template={"name": "chatml"})
    assert main(["preprocess", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "10 read, 3 kept, 7 skipped (invalid JSON: 4, missing field: 2, wrong type: 1)" in out


def test_rows_the_template_refuses_stop_or_skip(tmp_path, capsys):
    """mistral accepts only alternating user/assistant turns: a row breaking that is a bad row too."""
    import json

    from runner.cli import main
    from test_data_support import tiny_model_dir, write_config

    data = tmp_path / "chats.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"},
                        {"role": "assistant", "content": "yo"}]}
    data.write_text("\n".join(json.dumps(r) for r in (good, bad, good)) + "\n")
    model = {"path": str(tiny_model_dir(tmp_path, ("<s>", "</s>")))}
    cfg = write_config(tmp_path, [{"path": str(data), "format": "openai"}], model=model, template={"name": "mistral"})
    assert main(["preprocess", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{data}:2: template mistral cannot render this conversation" in err and "alternate" in err
    cfg = write_config(tmp_path, [{"path": str(data), "format": "openai", "on_bad_row": "skip"}], model=model,
                       template={"name": "mistral"})
    assert main(["preprocess", str(cfg), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["train"]["rows"] == 2 and stats["train"]["template_refused_skipped"] == 1
