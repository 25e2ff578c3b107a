"""bench/random_checkpoint.py: a random-init checkpoint written shard by shard from a meta-device model
(what the 70B FSDP + QLoRA benchmark loads), proven on a tiny shape: transformers reads it back with
every tensor in place and the same config, the values follow the initialisation rule, a seed gives the
same weights, and no shard exceeds its size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import random_checkpoint  # noqa: E402


def tiny_config(**changes):
    from transformers import LlamaConfig

    keys = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, dtype="bfloat16")
    return LlamaConfig(**{**keys, **changes})


def test_the_folder_reloads_whole_with_the_same_config(tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = tiny_config()
    out = random_checkpoint.write(config, tmp_path / "m", shard_bytes=20_000, device="cpu")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(out.glob("model-*.safetensors"))
    assert len(files) > 3 and set(index["weight_map"].values()) == {f.name for f in files}
    # A shard's tensors hold at most its size, unless one tensor alone is larger (the embedding and the
    # head here: 96 x 32 x 2 bytes); the rest of a file is its JSON header.
    from safetensors import safe_open

    for f in files:
        with safe_open(f, "pt") as st:
            sizes = [st.get_slice(k).get_shape() for k in st.keys()]
        held = sum(2 * (s[0] * (s[1] if len(s) > 1 else 1)) for s in sizes)
        assert held <= max(20_000, 96 * 32 * 2), (f, held)

    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, dtype=torch.bfloat16)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    again = AutoConfig.from_pretrained(out)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "tie_word_embeddings"):
        assert getattr(again, key) == getattr(config, key), key
    state = model.state_dict()
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in state.values())
    assert torch.equal(state["model.norm.weight"], torch.ones(32, dtype=torch.bfloat16))
    assert torch.equal(state["model.layers.1.input_layernorm.weight"], torch.ones(32, dtype=torch.bfloat16))
    q = state["model.layers.2.self_attn.q_proj.weight"].float()
    assert abs(q.std().item() - config.initializer_range) < 0.005 and abs(q.mean().item()) < 0.005
    # Every weight was filled (not left at zeros or the same draw twice).
    assert not torch.equal(state["model.layers.0.mlp.up_proj.weight"], state["model.layers.1.mlp.up_proj.weight"])
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits.float()).all()


def test_a_seed_gives_the_same_weights_and_another_seed_others(tmp_path):
    from safetensors.torch import load_file

    def tensors(directory):
        out = {}
        for f in sorted(directory.glob("model-*.safetensors")):
            out.update(load_file(f))
        return out

    a = tensors(random_checkpoint.write(tiny_config(), tmp_path / "a", shard_bytes=50_000, seed=3, device="cpu"))
    b = tensors(random_checkpoint.write(tiny_config(), tmp_path / "b", shard_bytes=50_000, seed=3, device="cpu"))
    c = tensors(random_checkpoint.write(tiny_config(), tmp_path / "c", shard_bytes=50_000, seed=4, device="cpu"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert not a["lm_head.weight"].equal(c["lm_head.weight"])


def test_tied_embeddings_are_written_once_and_tied_on_load(tmp_path):
    from transformers import AutoModelForCausalLM

    out = random_checkpoint.write(tiny_config(tie_word_embeddings=True), tmp_path / "t", device="cpu")
    names = set(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"])
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"], info
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_a_finished_folder_is_kept_and_a_half_written_one_rebuilt(tmp_path):
    out = random_checkpoint.write(tiny_config(), tmp_path / "m", device="cpu")
    stamp = (out / "config.json").stat().st_mtime_ns
    assert random_checkpoint.write(tiny_config(), tmp_path / "m", device="cpu") == out
    assert (out / "config.json").stat().st_mtime_ns == stamp
    broken = tmp_path / "m2.tmp"
    broken.mkdir()
    (broken / "model-00001-of-00009.safetensors").write_bytes(b"cut off")
    out2 = random_checkpoint.write(tiny_config(), tmp_path / "m2", device="cpu")
    assert not broken.exists() and (out2 / random_checkpoint.MARKER).is_file()


def test_the_command_writes_the_70b_shape_in_miniature_with_its_tokenizer(tmp_path, shared_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = subprocess.run([sys.executable, str(REPO / "bench" / "random_checkpoint.py"), "--shape", "llama3_70b",
                             "--tiny", "--shard-gib", "0.0001", "--out", str(tmp_path / "m"), "--data", str(shared_data)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = Path(result.stdout.strip().splitlines()[-1])
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == len(tokenizer) and model.config.num_key_value_heads == 2
    assert len(list(out.glob("model-*.safetensors"))) > 1
