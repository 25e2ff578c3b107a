"""training.precision fp8: refusals at lint and at launch, the launch decisions, and the FP8 LoRA
function's numbers against the bf16/fp32 path (torch._scaled_mm with float8 runs on this CPU torch:
the real function, not an emulation). torchao's full fine-tune swap where torchao is installed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from situations import facts, gpu, runtime

from runner.cli import main
from runner.errors import UserError
from runner.plan.resolve import make_plan
from runner.train.fast import fp8_lora, fp8_quant, fused_lora
from runner.train.runtime import FP8_BACKWARD
from runner.train.fast.fused_lora import fuse_lora

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "configs"
HOPPER = gpu(compute_capability=(9, 0))
# FP8 e4m3 keeps 3 mantissa bits (relative step 1/16): a matmul's output and gradients, each an
# average over K products of rounded values, land within a few percent of the exact result.
TOLERANCE = 0.06
# Through a 2-layer model with an FP8 backward the per-layer errors add up: LoRA gradients within 10%.
MODEL_TOLERANCE = 0.10


def plan(*overrides, config="lora.yaml"):
    return make_plan(CONFIGS / config, ["training.precision=fp8", *overrides])


# --- refused before anything loads ----------------------------------------------------------------

@pytest.mark.parametrize("config, overrides, key", [
    ("qlora.yaml", (), "quantization.bits"),
    ("lora.yaml", ("adapter.dora=true",), "adapter.dora"),
    ("freeze.yaml", (), "adapter.kind"),
    ("lora.yaml", ("training.fused_lora=false",), "training.fused_lora"),
    ("lora.yaml", ("model.dtype=float16",), "model.dtype"),
    ("fsdp.yaml", (), "distributed.backend"),
    ("deepspeed.yaml", (), "distributed.backend"),
])
def test_lint_refuses_what_fp8_cannot_serve(capsys, config, overrides, key):
    code = main(["plan", str(CONFIGS / config), "training.precision=fp8", *overrides])
    out = "".join(capsys.readouterr())
    assert code == 2
    assert f"{key}:" in out and "fp8" in out


def test_lint_accepts_lora_and_full(capsys):
    assert main(["plan", str(CONFIGS / "lora.yaml"), "training.precision=fp8"]) == 0
    assert main(["plan", str(CONFIGS / "full.yaml"), "training.precision=fp8"]) == 0


# --- refused or decided at launch ------------------------------------------------------------------

@pytest.mark.parametrize("machine, config, message", [
    (gpu(device="cpu", bf16_supported=False, visible_gpus=0), "lora.yaml", "this device is cpu"),
    (gpu(compute_capability=(8, 0)), "lora.yaml", "this GPU has 8.0"),
    (gpu(compute_capability=(9, 0), torchao_available=False), "full.yaml", "pip install torchao"),
])
def test_launch_refuses(machine, config, message):
    with pytest.raises(UserError) as err:
        runtime(plan(config=config), machine)
    assert message in str(err.value) + (err.value.hint or "")
    assert err.value.where in ("training.precision", "model.dtype")   # a UserError: exit 2, no traceback


def test_lora_takes_the_fp8_base_path_on_ada_and_hopper():
    for cap in ((8, 9), (9, 0)):
        rt = runtime(plan(), gpu(compute_capability=cap))
        assert (rt.precision, rt.dtype, rt.fast_path.fp8, rt.fast_path.fused_lora) == ("fp8", "bfloat16",
                                                                                      "lora-base", True)


def test_full_fine_tune_takes_torchao_and_is_told_about_compile():
    from runner.train.runtime import decide_runtime

    rt, notes = decide_runtime(plan(config="full.yaml"), gpu(compute_capability=(9, 0), torchao_available=True),
                               facts(), 64)
    assert rt.fast_path.fp8 == "torchao" and not rt.fast_path.fused_lora
    assert any("torch_compile" in n for n in notes)
    _, notes = decide_runtime(plan("training.torch_compile=true", config="full.yaml"),
                              gpu(compute_capability=(9, 0), torchao_available=True), facts(), 64)
    assert not any("torch_compile" in n for n in notes)


def test_fp8_joins_the_plan_hash_and_bf16_hashes_as_before():
    bf16 = runtime(make_plan(CONFIGS / "lora.yaml", ["training.precision=bf16"]), HOPPER)
    assert "fp8" not in bf16.reproducible()["fast_path"]
    fp8 = runtime(plan(), HOPPER)
    assert fp8.reproducible()["fast_path"]["fp8"] == "lora-base"
    assert fp8.reproducible()["fast_path"]["fp8_backward"] == FP8_BACKWARD == "fp8"
    assert "fp8_backward" not in runtime(plan(config="full.yaml"), gpu(compute_capability=(9, 0),
                                                                       torchao_available=True)).reproducible()["fast_path"]


def test_arguments_train_fp8_under_bf16_autocast(tmp_path):
    from runner.train.arguments import common_arguments

    p = plan()
    args = common_arguments(p, runtime(p, HOPPER), output_dir=str(tmp_path), has_eval=False)
    assert args["bf16"] is True and args["fp16"] is False


# --- quantization ---------------------------------------------------------------------------------

def test_quantize_rows_scales_each_row_to_the_fp8_range():
    t = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [1e-3, 3e4, -7.0, 2.0]])
    q, scale = fp8_quant.quantize_rows(t)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (3, 1) and scale.dtype == torch.float32
    assert q.float().abs().amax(dim=1).tolist() == [448.0, 0.0, 448.0]      # each row's amax maps to 448
    back = q.float() * scale
    assert torch.equal(back[1], torch.zeros(4))                             # a zero row stays zero, finite
    big = t.abs() > t.abs().amax(dim=1, keepdim=True) / 64                  # values well inside the range
    assert ((back - t).abs()[big] <= t.abs()[big] / 16).all()               # within e4m3's rounding step


KERNEL_CHECK = """
import torch
from runner.train.fast import fp8_quant
g = torch.Generator().manual_seed(0)
for cols in (64, 200, 4100):                       # one block, a ragged block, several blocks
    x = torch.randn(24, cols, generator=g)
    x[0].zero_(); x[1] *= 1e4; x[2] *= 1e-6        # a zero row, a row far above 448, a tiny row
    x[3, 0] = 3e4                                  # an outlier: the rest of its row lands on FP8 subnormals
    x[4, :5] = torch.tensor([448.0, -448.0, 1e-30, -0.0, 2.0 ** -9])
    for dtype in (torch.float32, torch.bfloat16):
        t = x.to(dtype)
        q, scale = fp8_quant.quantize_triton(t)
        ref_q, ref_scale = fp8_quant.quantize_rows(t)
        assert torch.equal(scale, ref_scale), (cols, dtype)
        assert torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8)), (cols, dtype)
print("bitwise equal")
"""


def test_the_triton_kernel_equals_the_eager_quantization_bit_for_bit():
    """The GPU kernel's own code, run by Triton's CPU interpreter, against torch's float8 cast."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton", reason="Triton is not installed (the GPU build of torch brings it)")
    proc = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=dict(os.environ, TRITON_INTERPRET="1"),
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0 and "bitwise equal" in proc.stdout, proc.stderr[-3000:]


def test_a_kernel_that_does_not_build_falls_back_to_eager_with_a_warning(monkeypatch):
    pytest.importorskip("triton", reason="Triton is not installed (the GPU build of torch brings it)")
    monkeypatch.setattr(fp8_quant, "_KERNEL", [])
    monkeypatch.setattr(fp8_quant, "_BUILT", set())
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.warns(UserWarning, match="runs in eager PyTorch"):
        assert fp8_quant.quantize_triton(torch.randn(4, 32)) is None     # no GPU driver here: it cannot build
    assert fp8_quant._KERNEL == [None] and fp8_quant.quantize_triton(torch.randn(4, 32)) is None


def test_a_shared_input_is_quantized_once_and_again_when_it_changes():
    x = torch.randn(2, 8, 32)
    first = fp8_quant.quantize(x.reshape(-1, 32), x)
    assert fp8_quant.quantize(x.reshape(-1, 32), x) is first                 # k and v after q: reused
    other = x.clone()
    assert fp8_quant.quantize(other.reshape(-1, 32), other) is not first     # another tensor, equal values
    again = fp8_quant.quantize(x.reshape(-1, 32), x)
    assert again is not first and torch.equal(again[0].float(), first[0].float())   # only the last is kept
    x.mul_(2.0)                                                              # written in place: quantized anew
    doubled = fp8_quant.quantize(x.reshape(-1, 32), x)
    assert doubled is not again and torch.allclose(doubled[1], 2 * again[1])
    assert fp8_quant.quantize(x[:1].reshape(-1, 32), x) is not doubled       # another view of it: its own shape
    fp8_quant.forget()


def test_sharing_changes_no_number_of_the_fp8_model(monkeypatch):
    model = tiny_lora()
    fuse_lora(model, fp8_backward="bf16")
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))
    loss_and_grads(model, ids)                                             # casts the weights first
    calls = []
    real = fp8_quant.quantize_rows
    monkeypatch.setattr(fp8_quant, "quantize_rows", lambda t: calls.append(t.shape) or real(t))
    shared_loss, shared_grads = loss_and_grads(model, ids)
    shared_calls = len(calls)
    calls.clear()
    shared = fp8_quant.quantize
    monkeypatch.setattr(fp8_lora, "quantize", lambda t, source=None: shared(t))   # each layer for itself
    alone_loss, alone_grads = loss_and_grads(model, ids)
    # per layer: q, k and v share one quantization, gate and up another, o and down their own: 4 of 7
    assert (shared_calls, len(calls)) == (2 * 4, 2 * 7)
    assert torch.equal(shared_loss, alone_loss)
    assert all(torch.equal(shared_grads[n], alone_grads[n]) for n in alone_grads)
    fp8_quant.forget()


# --- the FP8 LoRA layer -----------------------------------------------------------------------------

def tiny_lora(seed: int = 0, hidden: int = 64, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                                lora_dropout=dropout, init_lora_weights=False))
    return model


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("backward", ["fp8", "bf16"])
def test_fp8_lora_matches_the_reference_within_tolerance(backward):
    reference = tiny_lora()
    model = copy.deepcopy(reference)
    assert fuse_lora(model, fp8_backward=backward) == 14
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(1))
    ref_loss, ref_grads = loss_and_grads(reference, ids)
    loss, grads = loss_and_grads(model, ids)
    assert abs(float(loss - ref_loss)) < 0.01 * float(ref_loss)
    assert ref_grads.keys() == grads.keys() and all("lora_" in n for n in grads)   # no base weight trains
    worst = max(rel(grads[n], ref_grads[n]) for n in grads)
    assert worst < MODEL_TOLERANCE, worst
    # and FP8 really ran: the numbers differ from the exact path, and every layer holds its cache
    assert worst > 1e-4
    caches = [m._runner_fp8 for m in model.modules() if getattr(m, "_runner_fp8", None) is not None]
    assert len(caches) == 14 and all((c.cols is not None) == (backward == "fp8") for c in caches)


def test_fp8_backward_is_the_fp8_matmul_and_bf16_backward_exact_to_the_weight():
    torch.manual_seed(0)
    x = torch.randn(32, 64, requires_grad=True)
    weight = torch.randn(48, 64)
    a, b = torch.randn(8, 64, requires_grad=True), torch.randn(48, 8, requires_grad=True)
    g = torch.randn(32, 48)
    grads = {}
    for mode in ("fp8", "bf16"):
        x.grad = None
        out = fused_lora._LoRALinear.apply(x, None, weight, None, a, b, 0.5, fp8_lora.FP8Weight(weight, mode))
        out.backward(g)
        grads[mode] = x.grad.clone()
    exact = g @ weight + 0.5 * (g @ b.detach()) @ a.detach()
    # CUDA's _scaled_mm takes its second operand column-major: the cached rows (W) and columns (W^T)
    # are row-major copies, passed transposed; the scales are (1, N) and (1, K) float32
    cached = fp8_lora.FP8Weight(weight, "fp8")
    assert cached.rows.is_contiguous() and cached.cols.is_contiguous() and cached.cols.shape == (64, 48)
    assert cached.row_scale.shape == (1, 48) and cached.col_scale.shape == (1, 64)
    assert cached.row_scale.dtype == cached.col_scale.dtype == torch.float32
    assert torch.allclose(grads["bf16"], exact, rtol=1e-4, atol=1e-4)
    assert 1e-4 < rel(grads["fp8"], exact) < TOLERANCE


def test_the_cache_is_reused_and_recast_when_the_weight_changes():
    model = tiny_lora()
    fuse_lora(model, fp8_backward="bf16")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    ids = torch.randint(0, 256, (1, 16))
    model(input_ids=ids)
    first = layer._runner_fp8
    model(input_ids=ids)
    assert layer._runner_fp8 is first                                  # cast once
    with torch.no_grad():
        layer.base_layer.weight.mul_(2.0)                              # an in-place write (loading) bumps the version
    model(input_ids=ids)
    assert layer._runner_fp8 is not first
    assert torch.allclose(layer._runner_fp8.row_scale, 2 * first.row_scale)
    second = layer._runner_fp8
    layer.merge()                                                      # writes through .data: no version bump
    assert layer._runner_fp8 is None
    layer.unmerge()
    model(input_ids=ids)
    assert layer._runner_fp8 is not second
    assert fp8_lora.drop_caches(model) == 14 and layer._runner_fp8 is None


def test_compiled_model_keeps_one_graph_and_the_fp8_numbers():
    model = tiny_lora()
    fuse_lora(model, fp8_backward="fp8")
    ids = torch.randint(0, 256, (2, 32))
    eager_loss, eager_grads = loss_and_grads(model, ids)               # builds the caches
    explained = torch._dynamo.explain(model)(input_ids=ids, labels=ids)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    compiled = torch.compile(model, backend="aot_eager")
    loss, grads = loss_and_grads(compiled, ids)
    grads = {n.replace("_orig_mod.", ""): g for n, g in grads.items()}
    assert torch.allclose(loss, eager_loss, rtol=1e-5)
    assert max(rel(grads[n], eager_grads[n]) for n in eager_grads) < 1e-3
    torch._dynamo.reset()


def test_merged_output_matches_the_fp8_forward():
    model = tiny_lora()
    model.eval()
    fuse_lora(model, fp8_backward="fp8")
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        fp8 = model(input_ids=ids).logits
        layer = model.base_model.model.model.layers[0].mlp.down_proj
        layer.merge()                                                  # merged: PEFT's own forward, exact
        merged = model(input_ids=ids).logits
    assert rel(fp8, merged) < TOLERANCE


def test_sizes_scaled_mm_cannot_take_stay_on_the_exact_fused_path():
    assert fp8_lora.fp8_fits(64, 48) and not fp8_lora.fp8_fits(72, 48) and not fp8_lora.fp8_fits(64, 40)
    reference = tiny_lora(hidden=72)                                  # 72 % 16 != 0: every layer falls back
    model = copy.deepcopy(reference)
    fuse_lora(model, fp8_backward="fp8")
    ids = torch.randint(0, 256, (2, 16))
    ref_loss, ref_grads = loss_and_grads(reference, ids)
    loss, grads = loss_and_grads(model, ids)
    assert not any(getattr(m, "_runner_fp8", None) for m in model.modules())
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    assert max(rel(grads[n], ref_grads[n]) for n in grads) < 1e-4


# --- full fine-tune through torchao ------------------------------------------------------------------

def test_torchao_swaps_the_decoder_linears_but_not_the_head():
    pytest.importorskip("torchao.float8")
    from torchao.float8.float8_linear import Float8Linear
    from transformers import LlamaConfig, LlamaForCausalLM

    from runner.train.fast.fp8_full import convert_full

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    reference = LlamaForCausalLM(config)
    model = copy.deepcopy(reference)
    assert convert_full(model) == 14
    assert not isinstance(model.lm_head, Float8Linear)
    ids = torch.randint(0, 256, (2, 32))
    ref_loss, ref_grads = loss_and_grads(reference, ids)
    loss, grads = loss_and_grads(model, ids)
    assert abs(float(loss - ref_loss)) < 0.01 * float(ref_loss)
    name = "model.layers.0.mlp.down_proj.weight"
    assert 1e-4 < rel(grads[name], ref_grads[name]) < 2 * TOLERANCE   # e5m2 output gradients: 2 mantissa bits


# --- the recipe carries the Runtime out --------------------------------------------------------------

def set_up(config: str, backward: str | None = None, **env_changes):
    """The recipe's model for `config` with precision fp8, as decided for an sm90 GPU (built here on
    the CPU, where torch._scaled_mm also runs float8); `backward` replaces the recorded fp8_backward."""
    import dataclasses

    from runner.data import load_tokenizer
    from runner.train import stages
    from runner.train.recipe import setup_model
    from runner.train.runtime import model_facts

    p = plan("model.random_init=true", config=config)
    decided = runtime(p, gpu(compute_capability=(9, 0), **env_changes), model_facts(p))
    if backward:
        decided = dataclasses.replace(decided, fast_path=dataclasses.replace(decided.fast_path, fp8_backward=backward))
    p = p.with_runtime(decided)
    return setup_model(p, stages.get(p.training.stage), load_tokenizer(p), is_main=False)


def test_the_recipe_routes_lora_through_the_fp8_base():
    model = set_up("lora.yaml")
    routed = [m for m in model.model.modules() if getattr(m, "_runner_fp8_backward", None)]
    assert model.fused_lora_layers == len(routed) > 0
    assert {m._runner_fp8_backward for m in routed} == {FP8_BACKWARD}
    ids = torch.randint(0, model.model.get_input_embeddings().num_embeddings, (1, 16))
    model.model(input_ids=ids).logits.sum().backward()
    fits = [m for m in routed if fp8_lora.fp8_fits(m.base_layer.in_features, m.base_layer.out_features)]
    assert fits and all(m._runner_fp8 is not None for m in fits)     # each fitting layer ran in FP8


def test_the_recipe_trains_the_recorded_fp8_backward():
    model = set_up("lora.yaml", backward="bf16")
    routed = [m for m in model.model.modules() if getattr(m, "_runner_fp8_backward", None)]
    assert routed and {m._runner_fp8_backward for m in routed} == {"bf16"}


def test_the_recipe_converts_a_full_fine_tune_with_torchao():
    pytest.importorskip("torchao.float8")
    from torchao.float8.float8_linear import Float8Linear

    model = set_up("full.yaml", torchao_available=True)
    swapped = [m for m in model.model.modules() if isinstance(m, Float8Linear)]
    assert swapped and not isinstance(model.model.get_output_embeddings(), Float8Linear)


# --- the GPU check's code paths, on the CPU --------------------------------------------------------

def test_fp8_check_smoke_writes_numbers_and_curves(tmp_path, shared_data):
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "bench" / "fp8_check.py"), "--smoke", "--out", str(tmp_path),
                           "--parts", "q,a,c,e8", "--data", str(shared_data)],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "fp8_check-a_c_e8_q.json").read_text())
    assert set(result["quantizer"]) == {"64", "128", "100"}                 # the widths, timed
    assert all(row["eager_ms"] > 0 and row["compiled_ms"] > 0 for row in result["quantizer"].values())
    for row in result["numerics"].values():
        assert row["bf16"]["out_rel_err"] < 1e-5                      # fp32 on the CPU: the exact path
        assert 1e-3 < row["fp8-fp8bwd"]["out_rel_err"] < TOLERANCE    # float8 rounding, within tolerance
        assert row["fp8-bf16bwd"]["grad_x_rel_err"] < 1e-5 < row["fp8-fp8bwd"]["grad_x_rel_err"] < TOLERANCE
    assert set(result["lora8b_speed"]) == {"bf16", "fp8-bf16bwd", "fp8-fp8bwd", "fp8-widefp8bwd", "fp8wide-bf16bwd"}
    curves = result["curves"]["lora8b"]
    assert len(curves["bf16"]["losses"]) == len(curves["fp8-fp8bwd"]["losses"]) == 3
    assert curves["within_tolerance"] and (tmp_path / "fp8_loss_lora8b.png").stat().st_size > 10_000
