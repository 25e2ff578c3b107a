"""model.attn_implementation: varlen on tiny real Llama / Qwen2 models (CPU: the per-sample sdpa
reference path; the flash kernel itself runs in bench/varlen_check.py on the GPU). The numbers
must be sdpa's: packed rows (restarting position_ids), padded rows (2D mask, either side) and a
whole training run."""

from __future__ import annotations

import importlib.util
import json

import pytest

torch = pytest.importorskip("torch")

from runner.train.fast import varlen  # noqa: E402
from runner.plan.resolve import make_plan  # noqa: E402
from runner.cli import main  # noqa: E402
from runner.errors import UserError  # noqa: E402
from pathlib import Path  # noqa: E402

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "configs"


def _model(attn: str, arch: str = "llama", **extra):
    from tests.tiny_model import tiny_config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = tiny_config(arch, vocab_size=97, layers=2, **extra)
    cfg.use_cache = False
    name = varlen.register() if attn == "varlen" else attn
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=name, dtype=torch.float32)


def _packed():
    """Two rows: samples of 7, 5 and 8 tokens, then 6 and 11 and 3 padding tokens (own positions)."""
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(3))
    pos = torch.stack([torch.cat([torch.arange(7), torch.arange(5), torch.arange(8)]),
                       torch.cat([torch.arange(6), torch.arange(11), torch.arange(3)])])
    labels = ids.clone()
    labels[0, [0, 7, 12]] = -100
    labels[1, [0, 6]] = -100
    labels[1, 17:] = -100
    return {"input_ids": ids, "position_ids": pos, "labels": labels}


def test_segments_follow_position_restarts_and_drop_masked_tokens():
    pos = _packed()["position_ids"]
    index, cu, longest = varlen.segments(pos, None, 2, 20)
    assert index is None and cu.tolist() == [0, 7, 12, 20, 26, 37, 40] and longest == 11
    mask = torch.tensor([[1] * 20, [0] * 4 + [1] * 16])  # left padding in row 2
    index, cu, longest = varlen.segments(None, mask, 2, 20)
    assert index.tolist() == list(range(20)) + list(range(24, 40))
    assert cu.tolist() == [0, 20, 36] and longest == 20
    # a position that does not follow the one before starts a sample even without a restart at 0
    index, cu, _ = varlen.segments(torch.tensor([[0, 1, 2, 5, 6, 7]]), None, 1, 6)
    assert cu.tolist() == [0, 3, 6]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_packed_rows_give_sdpa_loss_and_gradients(arch):
    batch = _packed()
    results = []
    for attn in ("sdpa", "varlen"):
        model = _model(attn, arch).train()
        loss = model(**batch).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packed_row_attends_within_its_samples_only():
    """Changing the first sample of a row leaves the other samples' logits as they were."""
    model = _model("varlen").eval()
    batch = _packed()
    other = {k: v.clone() for k, v in batch.items()}
    other["input_ids"][0, :7] = (other["input_ids"][0, :7] + 1) % 97
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        b = model(input_ids=other["input_ids"], position_ids=other["position_ids"]).logits
    torch.testing.assert_close(a[0, 7:], b[0, 7:])
    assert not torch.allclose(a[0, :7], b[0, :7])


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_rows_give_sdpa_logits_on_real_tokens(side):
    ids = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(5))
    lengths = [12, 7, 3]
    mask = torch.zeros(3, 12, dtype=torch.long)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, 12 - n:] = 1
    logits = []
    for attn in ("sdpa", "varlen"):
        with torch.no_grad():
            logits.append(_model(attn).eval()(input_ids=ids, attention_mask=mask).logits)
    real = mask.bool()
    torch.testing.assert_close(logits[1][real], logits[0][real], rtol=1e-5, atol=1e-5)


def test_refuses_a_kv_cache_and_models_it_cannot_run():
    model = _model("varlen").eval()
    ids = torch.randint(0, 97, (1, 6))
    with torch.no_grad(), pytest.raises(NotImplementedError, match="generate with sdpa"):
        model.generate(ids, max_new_tokens=2, do_sample=False, use_cache=True)
    from transformers import Gemma2Config, MistralConfig

    assert "soft-caps" in varlen.unsupported(Gemma2Config())
    assert "sliding-window" in varlen.unsupported(MistralConfig(sliding_window=4096))
    assert varlen.unsupported(MistralConfig(sliding_window=None)) is None
    assert varlen.unsupported(model.config) is None


def _train(tmp_path, attn, **config):
    from tests.tiny_model import save_tiny_model, write_config

    model_dir = save_tiny_model(tmp_path / "model", **config)
    cfg = write_config(tmp_path / attn, model_dir, stage="pt",
                       sequence={"max_length": 64, "packing": True, "truncation": "split"},
                       training={"max_steps": 3, "micro_batch_size": 2},
                       extra={"model": {"path": str(model_dir), "dtype": "float32", "attn_implementation": attn}})
    code = main(["train", str(cfg)])
    return code, tmp_path / attn / "run"


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and "train_runtime" not in r]


def test_training_with_varlen_gives_the_sdpa_losses(tmp_path):
    code_a, run_a = _train(tmp_path, "sdpa")
    code_b, run_b = _train(tmp_path, "varlen")
    assert code_a == code_b == 0
    plan = json.loads((run_b / "plan.json").read_text())
    assert plan["runtime"]["attn_implementation"] == "varlen"
    assert plan["runtime"]["cuda_alloc_conf"]  # runner's expandable segments, or the user's own setting
    losses_a, losses_b = _losses(run_a), _losses(run_b)
    assert len(losses_a) == 3
    assert losses_b == pytest.approx(losses_a, rel=1e-5)


def test_varlen_on_a_sliding_window_model_stops_with_exit_2(tmp_path, capsys):
    code, run_dir = _train(tmp_path, "varlen", arch="qwen2", use_sliding_window=True, sliding_window=32)
    assert code == 2
    err = capsys.readouterr().err
    assert "model.attn_implementation" in err and "sliding-window" in err
    assert not (run_dir / "adapter_model.safetensors").exists()


def test_load_for_generation_uses_sdpa():
    from runner.train.model import attn_for_transformers

    assert attn_for_transformers("varlen", for_training=False) == "sdpa"
    assert attn_for_transformers("varlen", for_training=True) == varlen.NAME
    assert attn_for_transformers("eager", for_training=True) == "eager"
    from situations import gpu

    from runner.train.runtime import decide_attention, facts_of

    plan = make_plan(CONFIGS / "lora.yaml", ["model.attn_implementation=varlen"])
    with pytest.raises(UserError, match="sliding"):
        decide_attention(plan, gpu(), facts_of(_model("sdpa", "qwen2", use_sliding_window=True, sliding_window=8)))


def test_varlen_under_torch_compile_gives_the_sdpa_loss():
    """The attention function stays out of the compiled graphs; the layers around it compile."""
    batch = _packed()
    eager = _model("sdpa").train()(**batch).loss
    compiled = torch.compile(_model("varlen").train())
    loss = compiled(**batch).loss
    loss.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)


def test_a_batch_changed_in_place_gets_new_segments():
    """Every layer reuses the batch's offsets; position_ids edited in place are not the same batch."""
    model = _model("varlen").eval()
    batch = _packed()
    pos = batch["position_ids"].clone()
    with torch.no_grad():
        model(input_ids=batch["input_ids"], position_ids=pos)
        first = varlen._BATCH[0][3][1].tolist()
        pos[0] = torch.arange(20)  # row 1 becomes one sample
        model(input_ids=batch["input_ids"], position_ids=pos)
    assert varlen._BATCH[0][3][1].tolist() != first
    assert varlen._BATCH[0][3][1].tolist()[:2] == [0, 20]


def test_auto_picks_varlen_only_where_it_is_known_to_run():
    from situations import env, gpu

    from runner.train.runtime import decide_attention, facts_of

    def auto(model, machine, *overrides):
        return decide_attention(make_plan(CONFIGS / "lora.yaml", list(overrides)), machine, facts_of(model))

    model = _model("sdpa")
    here = gpu(varlen_missing=varlen.missing())
    if importlib.util.find_spec("torch.nn.attention.varlen") is not None:
        assert auto(model, here) == ("varlen", None)
    name, why = auto(model, env())
    assert name == "sdpa" and "cpu" in why
    if importlib.util.find_spec("torch.nn.attention.varlen") is not None:
        assert auto(model, here, "training.torch_compile=true") == ("varlen", None)
    name, why = auto(_model("sdpa", "qwen2", use_sliding_window=True, sliding_window=8), here)
    assert name == "sdpa" and "sliding-window" in why


def test_a_model_switched_to_varlen_after_loading_gives_the_sdpa_loss():
    """auto loads with sdpa and switches the loaded model (set_attn_implementation) on a GPU."""
    batch = _packed()
    reference = _model("sdpa").train()(**batch).loss
    model = _model("sdpa").train()
    model.set_attn_implementation(varlen.register())
    assert model.config._attn_implementation == varlen.NAME
    seen = []
    original = varlen.segments

    def counting(*args):
        seen.append(1)
        return original(*args)

    varlen.segments, varlen._BATCH[:] = counting, []
    try:
        loss = model(**batch).loss
    finally:
        varlen.segments = original
    assert seen  # the varlen function ran, not sdpa
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)


def test_auto_trains_with_sdpa_on_the_cpu_and_says_why(tmp_path):
    code, run_dir = _train(tmp_path, "auto")
    assert code == 0
    runtime = json.loads((run_dir / "plan.json").read_text())["runtime"]
    assert runtime["attn_implementation"] == "sdpa"
    assert "cpu" in runtime["attn_implementation_auto"]
