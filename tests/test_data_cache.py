"""The tokenized-data cache and `runner preprocess`: the second run of the same config loads no
tokenizer and tokenizes nothing; touching one byte of the data rebuilds; --show marks trained
tokens; a non-main process waits for the main one and loads its cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import runner.data.tokenizer
from runner.cli import main
from runner.data import tokenize as tokenize_module
from test_data_support import SHARED, tiny_model_dir, write_config


def _config(tmp_path, **extra):
    data = tmp_path / "identity.json"
    if not data.exists():
        shutil.copy(SHARED / "identity.json", data)
    return write_config(tmp_path, [{"path": str(data), "format": "alpaca",
                                    "substitute": {"name": "Nova", "author": "Acme"}}],
                        model={"path": str(tiny_model_dir(tmp_path))}, template={"name": "chatml"},
                        sequence={"max_length": 256, "packing": True}, **extra)


def _counters():
    return runner.data.tokenizer.LOAD_COUNT, tokenize_module.TOKENIZE_CALLS


def test_second_preprocess_hits_cache_and_one_byte_rebuilds(tmp_path, capsys):
    cfg = _config(tmp_path)
    before = _counters()
    assert main(["preprocess", str(cfg)]) == 0
    first = capsys.readouterr()
    assert "cache: built" in first.err and "91 read, 91 kept" in first.out
    assert _counters() == (before[0] + 1, before[1] + 1)

    assert main(["preprocess", str(cfg)]) == 0
    second = capsys.readouterr()
    assert "cache: hit" in second.err
    assert _counters() == (before[0] + 1, before[1] + 1)  # no tokenizer loaded, nothing tokenized
    assert second.out == first.out

    data = tmp_path / "identity.json"
    raw = bytearray(data.read_bytes())
    raw[raw.index(b"Hello")] = ord("J")  # one byte
    data.write_bytes(bytes(raw))
    assert main(["preprocess", str(cfg)]) == 0
    third = capsys.readouterr()
    assert "cache: built" in third.err
    assert _counters() == (before[0] + 2, before[1] + 2)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir() and not p.name.startswith(".")]) == 2


def test_show_marks_trained_tokens_with_brackets_when_piped(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert main(["preprocess", str(cfg), "--show", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2
    assert "<|im_start|>assistant\n[[" in out and "<|im_end|>\n]]" in out
    assert "\x1b[" not in out
    assert "Nova" in out and "{{name}}" not in out
    for key in ("train: ", "tokens", "trained", "p50", "p99", "packed", "efficiency"):
        assert key in out
    assert main(["preprocess", str(cfg), "--show", "1", "--color", "always"]) == 0
    assert "\x1b[1;32m" in capsys.readouterr().out


def test_json_stats_count_truncation_and_drops(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert main(["preprocess", str(cfg), "sequence.max_length=48", "sequence.truncation=drop", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    counts = stats["train"]["counts"]
    assert counts["dropped_too_long"] > 0 and stats["train"]["packing"]["samples"] == 91 - counts["dropped_too_long"]
    assert stats["train"]["length"]["max"] <= 48
    assert main(["preprocess", str(cfg), "sequence.max_length=48", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["train"]["counts"]["truncated"] == counts["dropped_too_long"]


def test_truncation_error_names_rows(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert main(["preprocess", str(cfg), "sequence.max_length=48", "sequence.truncation=error"]) == 2
    err = capsys.readouterr().err
    assert "longer than sequence.max_length=48" in err and "identity.json:" in err


def test_non_main_process_waits_for_the_main_one(tmp_path):
    cfg = _config(tmp_path)
    code = ("import sys; from runner.plan.resolve import make_plan; from runner.data import build_datasets; "
            "p = build_datasets(make_plan(sys.argv[1]), tokenizer=lambda: 1 / 0); "
            "print(p.stats['cache'], len(p.train))")
    env = dict(os.environ, LOCAL_RANK="1", PYTHONPATH=str(Path(__file__).parent))
    waiter = subprocess.Popen([sys.executable, "-c", code, str(cfg)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        from runner.data import build_datasets
        from runner.plan.resolve import make_plan

        built = build_datasets(make_plan(cfg), progress=False)
        out, err = waiter.communicate(timeout=120)
    finally:
        waiter.kill()
    assert built.stats["cache"] == "built"
    assert waiter.returncode == 0, err
    assert out.split() == ["hit", str(len(built.train))]
