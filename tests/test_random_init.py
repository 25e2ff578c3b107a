"""model.random_init builds the architecture of config.json with seeded random weights: no weights
file is read (benchmarks of 8B shapes need none), the same seed gives the same weights."""

import torch

from runner.train.model import load_model
from runner.plan.resolve import make_plan
from tests.tiny_model import save_tiny_model

torch.set_num_threads(1)


def _plan(tmp_path, seed):
    model_dir = save_tiny_model(tmp_path / "m")
    for f in model_dir.glob("*.safetensors"):
        f.unlink()  # only config.json and the tokenizer stay
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {{path: {model_dir}, random_init: true, dtype: float32}}\n"
                   f"datasets:\n  - {{path: {tmp_path / 'd.json'}}}\n"
                   f"training: {{seed: {seed}}}\ndata: {{cache_dir: {tmp_path / 'cache'}}}\n")
    (tmp_path / "d.json").write_text('[{"instruction": "hi", "output": "hello"}]')
    return make_plan(cfg)


def test_random_init_needs_no_weights_and_follows_the_seed(tmp_path):
    def load(plan):
        return load_model(plan, dtype="float32", attn_implementation="sdpa")

    a = load(_plan(tmp_path / "a", 1))
    b = load(_plan(tmp_path / "b", 1))
    c = load(_plan(tmp_path / "c", 2))
    wa, wb, wc = (m.model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.isfinite(wa).all() and wa.abs().sum() > 0
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_random_init_fingerprint_ignores_weight_files(tmp_path):
    plan = _plan(tmp_path, 1)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"anything")
    assert make_plan(tmp_path / "cfg.yaml").hashes.model == plan.hashes.model
