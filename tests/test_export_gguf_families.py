"""Tiny random models of every family GGUF export supports, written by runner's converter and read
back by transformers' own GGUF loader: logits close to the source's, per tensor type.

Dims exercise the block-size fallback: hidden 64 is a whole number of 32-wide blocks, the MLP's
80 is not, so down_proj is written F16 while the other matrices take the block type."""
from __future__ import annotations

import pytest

from tests.tiny_tokenizer import save_tiny_tokenizer, tiny_tokenizer

# Largest |logit difference| allowed, relative to the source logits' largest |value|. Tiny random
# models with wide weights (0.2) amplify rounding: measured about 1e-6 (f32), 5e-3 (bf16), 2e-2
# (q8_0), 9e-2 (q5_1), 0.22 (q4_0); a wrong permutation or norm shift gives errors near 1.
TOLERANCE = {"f32": 1e-5, "f16": 2e-3, "bf16": 1e-2, "q8_0": 4e-2, "q5_1": 0.15, "q4_0": 0.35}


def tiny(family: str):
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, \
        Qwen2Config, Qwen3Config

    vocab = len(tiny_tokenizer())
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  initializer_range=0.2, tie_word_embeddings=False)
    configs = {
        "llama": lambda: LlamaConfig(**common),
        "mistral": lambda: MistralConfig(**common, sliding_window=None),
        "qwen2": lambda: Qwen2Config(**{**common, "tie_word_embeddings": True}),
        # transformers' GGUF reader takes Qwen3's and Gemma's head_dim (and Gemma's attention
        # scale) from its config defaults, so these use them: 128 and 256, not hidden / heads.
        "qwen3": lambda: Qwen3Config(**common, head_dim=128),
        "gemma2": lambda: Gemma2Config(**{**common, "tie_word_embeddings": True}, head_dim=256,
                                        query_pre_attn_scalar=256, sliding_window=8),
        "gemma3": lambda: Gemma3TextConfig(**{**common, "tie_word_embeddings": True}, head_dim=256,
                                            query_pre_attn_scalar=256, sliding_window=8),
    }
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(configs[family](), dtype=torch.float32)
    with torch.no_grad():  # random norms, so that a missing or doubled +1 shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(-0.5, 0.5)
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
    return model.eval()


def export_and_reload(model, tmp_path, quant: str):
    import torch
    from transformers import AutoModelForCausalLM

    from runner.ship.gguf_write import write_gguf

    tokenizer = tiny_tokenizer()
    save_tiny_tokenizer(tmp_path)
    written = write_gguf(model, tokenizer, tmp_path / f"m-{quant}.gguf", quant, chat_template=tokenizer.chat_template,
                         name="tiny")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=f"m-{quant}.gguf", dtype=torch.float32)
    return written, loaded.eval()


def logits(model):
    import torch

    ids = torch.tensor([[5, 17, 99, 3, 250, 41, 8, 77, 120, 300, 12, 60, 9, 201, 33, 2]])
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3"])
@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_family_round_trip(family, quant, tmp_path):
    model = tiny(family)
    written, loaded = export_and_reload(model, tmp_path, quant)
    assert type(loaded).__name__ in (type(model).__name__, "LlamaForCausalLM")  # Mistral is read as llama
    source, back = logits(model), logits(loaded)
    error = (source - back).abs().max().item() / source.abs().max().item()
    assert error < TOLERANCE[quant], f"{family} {quant}: relative logit error {error:.2e}"
    if quant == "q8_0":  # 80-wide rows are not whole 32-blocks: F16; 64-wide rows are
        assert written.types["blk.0.ffn_down.weight"] == "F16"
        assert written.types["blk.0.attn_q.weight"] == "Q8_0"
        assert written.types["blk.0.attn_norm.weight"] == "F32"
    assert ("output.weight" in written.types) == (not model.config.tie_word_embeddings)


@pytest.mark.parametrize("quant", ["bf16", "q5_1", "q4_0"])
def test_other_types_round_trip(quant, tmp_path):
    model = tiny("llama")
    written, loaded = export_and_reload(model, tmp_path, quant)
    source, back = logits(model), logits(loaded)
    error = (source - back).abs().max().item() / source.abs().max().item()
    assert error < TOLERANCE[quant], f"{quant}: relative logit error {error:.2e}"
    # 4- and 5-bit files keep the embedding and head at Q8_0.
    assert written.types["token_embd.weight"] == ("BF16" if quant == "bf16" else "Q8_0")
