"""load_tokenizer: special-token overrides, a pad token, and the training chat template attached
so that saving the tokenizer keeps it."""

from __future__ import annotations

from runner.data import load_tokenizer
from runner.data.templates import read_template
from test_data_support import SHARED, plan_for, tiny_model_dir


def _plan(tmp_path, **sections):
    return plan_for(tmp_path, [{"path": str(SHARED / "identity.json"), "format": "alpaca"}],
                    model={"path": str(tiny_model_dir(tmp_path))}, **sections)


def test_training_template_attached_and_saved(tmp_path):
    tok = load_tokenizer(_plan(tmp_path, template={"name": "chatml"}))
    assert tok.chat_template == read_template("own", "chatml.jinja")
    tok.save_pretrained(tmp_path / "saved")
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "saved").chat_template == tok.chat_template


def test_special_token_overrides(tmp_path):
    plan = _plan(tmp_path, special_tokens={"pad_token": "<|pad|>", "add": ["<tool>", "<|im_end|>"]})
    from tiny_tokenizer import tiny_tokenizer

    before = len(tiny_tokenizer())
    tok = load_tokenizer(plan)
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id == tok.convert_tokens_to_ids("<|pad|>")
    assert len(tok) == before + 2  # <|pad|> and <tool> are new; <|im_end|> already existed
    assert tok("a <tool> b", add_special_tokens=False)["input_ids"].count(tok.convert_tokens_to_ids("<tool>")) == 1


def test_pad_token_defaults_to_eos_when_missing(tmp_path):
    from runner.data.tokenizer import apply_special_tokens
    from tiny_tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.pad_token = None
    assert apply_special_tokens(tok, {}) == []
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
