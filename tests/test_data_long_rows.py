"""A valid row far longer than max_length costs what its first max_length tokens cost: the text is
cut by characters before tokenizing, with exactly the tokens the length policy would have kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.data.bounded import MARGIN, encode_bounded, max_token_chars
from runner.data.tokenize import _encode
from test_data_support import SHARED, smol_tokenizer, tiny_model_dir, write_config


def _texts():
    """Long real texts: English, Chinese, code-like JSON, runs of spaces and one long word."""
    alpaca = json.loads((SHARED / "alpaca_en_demo.json").read_text())
    identity = json.loads((SHARED / "identity.json").read_text())
    c4 = [json.loads(line)["text"] for line in (SHARED / "c4_demo.jsonl").read_text().splitlines()[:200]]
    glaive = (SHARED / "glaive_toolcall_en_demo.json").read_text()[:300_000]
    return [" ".join(r["output"] for r in alpaca), "".join(r["output"] for r in identity) * 20, "\n\n".join(c4),
            glaive, "a" * 400_000 + " end", (" " * 97 + "x\n") * 4000]


@pytest.mark.parametrize("which", ["smollm2", "tiny"])
@pytest.mark.parametrize("keep", ["start", "end"])
def test_the_cut_keeps_exactly_the_tokens_the_policy_keeps(which, keep):
    from tiny_tokenizer import tiny_tokenizer

    tok = smol_tokenizer() if which == "smollm2" else tiny_tokenizer()
    limit = 256
    texts = _texts()
    whole, _ = _encode(tok, texts)
    ids, _, cuts = encode_bounded(lambda chunk: _encode(tok, chunk), texts, limit, max_token_chars(tok), keep)
    assert all(c is not None for c in cuts), "every text is long enough to be cut"
    for full, got in zip(whole, ids):
        assert len(got) >= limit + MARGIN and len(full) > len(got)
        assert (got[:limit] == full[:limit]) if keep == "start" else (got[-limit:] == full[-limit:])


def test_a_normalizer_that_removes_characters_widens_the_cut():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "word": 1, "x": 2}, unk_token="[UNK]"))
    raw.normalizer = normalizers.Replace("\x07", "")  # bell characters vanish before tokenizing
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    text = "\x07" * 200_000 + "word " * 1000
    (full,), _ = _encode(tok, [text])
    (got,), _, (cut,) = encode_bounded(lambda chunk: _encode(tok, chunk), [text], 64, max_token_chars(tok), "start")
    assert got[:64] == full[:64] == [1] * 64
    assert cut is None or cut > 200_000


def test_a_50_mb_valid_row_is_read_in_bounded_memory_and_time(tmp_path):
    """One 50 MB answer among ordinary rows: truncated to max_length like any long row."""
    data = tmp_path / "big.jsonl"
    words = "the quick brown fox jumps over the lazy dog "
    with open(data, "w") as f:
        f.write(json.dumps({"instruction": "Say hi", "output": "Hi!"}) + "\n")
        f.write(json.dumps({"instruction": "Say a lot", "output": words * (50 * 2**20 // len(words))}) + "\n")
        f.write(json.dumps({"instruction": "Say ho", "output": "Ho!"}) + "\n")
    assert data.stat().st_size > 50 * 2**20
    cfg = write_config(tmp_path, [{"path": str(data), "format": "alpaca"}],
                       model={"path": str(tiny_model_dir(tmp_path))}, template={"name": "chatml"},
                       sequence={"max_length": 512})
    # VmHWM: this process's own peak (getrusage's maxrss would carry the parent's size at fork).
    code = ("import re, sys; from runner.cli import main; code = main(['preprocess', sys.argv[1], '--json']); "
            "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); "
            "print('PEAK', hwm // 1024, file=sys.stderr); sys.exit(code)")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    peak_mb = int(done.stderr.rsplit("PEAK ", 1)[1].split()[0])
    assert peak_mb < 1200, f"peak RSS {peak_mb} MB for a 50 MB row"
    stats = json.loads(done.stdout)
    assert stats["train"]["rows"] == 3 and stats["train"]["length"]["max"] == 512
    assert stats["train"]["counts"]["truncated"] == 1 and stats["train"]["counts"]["eot_cut"] == 1
