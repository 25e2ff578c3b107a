"""training.precision fp8 on one GPU, in one process: numbers, speed and loss curves against bf16.

    python bench/fp8_check.py --out DIR [--parts q,a,b,c,d,e8,e3] [--steps 200] [--data ../shared/data] [--smoke]

q   the activation quantizer (runner.train.fast.fp8_quant): the Triton kernel against the eager
    version, bit for bit, on random and awkward rows, and each one's time (plus torch.compile's) per
    projection input width at 8192 tokens
a   numerics: the FP8 LoRA layer (runner.train.fast.fp8_lora) against an fp64 reference on the
    Llama-3-8B projection shapes, forward and input gradient, beside plain bf16's own error
b   microbench per projection shape, 8192 tokens: forward + backward of the fused bf16 LoRA layer,
    FP8 with a bf16 input gradient, FP8 with an FP8 input gradient (milliseconds, speed-up)
c   LoRA r16 all-linear on the Llama-3-8B shape (random init on the GPU), rows of 2048, tokens/s for
    bf16, fp8 (bf16 backward), fp8 (fp8 backward), fp8 with the FP8 backward on the MLP's wide
    projections only, and fp8 on the wide projections only (LORA_MODES)
d   full fine-tune of the Llama-3.2-3B shape, rows of 2048 packed from 4 samples of 512 (restarting
    position ids), tokens/s: bf16 eager varlen (runner's full1b recipe), then bf16 and fp8 (torchao)
    each compiled with sdpa (its packed mask) and with varlen (a graph break at each attention call)
e8  loss curves, LoRA 8B, over --steps steps on real text (wiki_demo + c4_demo, rows of 512): bf16 vs
    fp8 from the same initial weights and batches; the largest gap of the 20-step moving means against
    TOLERANCE, plotted to DIR/fp8_loss_lora8b.png
e3  the same for the full 3B fine-tune (bf16 compiled vs fp8 compiled): DIR/fp8_loss_full3b.png

Parts q, a and b live in bench/fp8_layer.py. Compiled variants compile each decoder layer (one compilation serves every layer: seconds, not
minutes); runner's training.torch_compile compiles the whole model through the Trainer, the same
kernels with the layer boundaries fused as well. Writes DIR/fp8_check-PARTS.json (every number and
loss) and prints one line per measurement. --smoke: a 2-layer, 64-wide model on the CPU in fp32
(torch._scaled_mm runs float8 on CPU torch), 3 steps, every code path. The end-to-end runner
figure: bench/harness.py lora8b_packed_fp8."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fp8_layer import now, part_microbench, part_numerics, part_quantizer  # noqa: E402
from runner.train.fast import fp8_lora  # noqa: E402
from runner.train.fast.fused_lora import fuse_lora  # noqa: E402

LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256)
LLAMA_3B = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True)
SMOKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=2048)
# Loss-curve tolerance: the 20-step moving means of the fp8 and bf16 losses differ by at most this
# fraction of the bf16 value at every step (FP8 rounding is noise of about a percent per matmul).
TOLERANCE = 0.02
WINDOW = 20


def build(cfg: dict, device, dtype, seed: int = 0, attention: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    if attention == "varlen":
        from runner.train.fast import varlen

        attention = varlen.register()
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation=attention))
    finally:
        torch.set_default_dtype(default)
    model.config.use_cache = False
    return model


def lora_model(cfg, device, dtype):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build(cfg, device, dtype), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                                 lora_dropout=0.0))
    fuse_lora(model, fp8_backward="bf16")
    model.config.use_cache = False
    return model


LORA_MODES = ("bf16", "fp8-bf16bwd", "fp8-fp8bwd", "fp8-widefp8bwd", "fp8wide-bf16bwd")


def wide(module) -> bool:
    """The MLP's projections (one side at least twice the other), not attention's square or narrow ones."""
    k, n = module.base_layer.in_features, module.base_layer.out_features
    return max(k, n) >= 2 * min(k, n)


def set_lora_mode(model, mode: str) -> None:
    """bf16: the fused bf16 path; fp8-bf16bwd / fp8-fp8bwd: the FP8 base with that input gradient;
    fp8-widefp8bwd: the FP8 input gradient on the wide layers only; fp8wide-bf16bwd: FP8 on the wide
    layers only (attention's projections stay bf16)."""
    for module in model.modules():
        if hasattr(module, "_runner_peft_forward"):
            backward = {"bf16": None, "fp8-bf16bwd": "bf16", "fp8-fp8bwd": "fp8",
                        "fp8-widefp8bwd": "fp8" if wide(module) else "bf16",
                        "fp8wide-bf16bwd": "bf16" if wide(module) else None}[mode]
            module._runner_fp8_backward = backward
            fp8_lora.drop_cache(module)


def batches(ids: torch.Tensor, rows: int, length: int, device, sample: int | None = None):
    """(input_ids, position_ids or None) of each step; sample: position ids restart every `sample`
    tokens, a row packed from length / sample samples."""
    per = rows * length
    positions = None
    if sample:
        positions = (torch.arange(length, device=device) % sample).expand(rows, length)
    step = 0
    while True:
        start = (step * per) % max(ids.numel() - per, 1)
        yield ids[start:start + per].view(rows, length).to(device, non_blocking=True), positions
        step += 1


def train(model, data, steps: int, device, lr: float, warmup: int = 0) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, fused=device == "cuda")
    losses, start = [], None
    for step in range(steps):
        if step == warmup:
            start = now(device)
        batch, positions = next(data)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=batch, labels=batch, position_ids=positions).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    seconds = now(device) - start
    tokens = (steps - warmup) * batch.numel()
    return {"losses": [float(v) for v in losses], "tokens_per_s": tokens / seconds, "seconds": seconds,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def text_ids(data_dir: Path, vocab: int) -> torch.Tensor:
    sys.path.insert(0, str(ROOT / "bench"))
    from modeldir import train_tokenizer

    tok = train_tokenizer(data_dir, vocab)
    texts = [line for line in (data_dir / "wiki_demo.txt").read_text().splitlines() if line.strip()]
    texts += [json.loads(line)["text"] for line in (data_dir / "c4_demo.jsonl").read_text().splitlines() if line.strip()]
    ids = [i for t in texts for i in tok(t)["input_ids"] + [tok.eos_token_id]]
    return torch.tensor(ids, dtype=torch.long).pin_memory() if torch.cuda.is_available() else torch.tensor(ids)


def random_ids(vocab: int, n: int) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(0))


def part_lora_speed(cfg, device, dtype, rows, length, warmup, timed) -> dict:
    model = lora_model(cfg, device, dtype)
    out = {}
    for mode in LORA_MODES:
        set_lora_mode(model, mode)
        res = train(model, batches(random_ids(cfg["vocab_size"], rows * length * (warmup + timed)), rows, length,
                                   device), warmup + timed, device, 1e-5, warmup)
        out[mode] = {k: res[k] for k in ("tokens_per_s", "peak_gib")}
        print(f"c lora8b {mode}: {res['tokens_per_s']:,.0f} tokens/s (rows {rows}x{length}, peak {res['peak_gib']} GiB)",
              flush=True)
    del model
    return out


FULL_VARIANTS = ("bf16-eager-varlen", "bf16-compiled-sdpa", "bf16-compiled-varlen", "fp8-compiled-sdpa",
                 "fp8-compiled-varlen")


def full_variant(cfg, device, dtype, variant: str):
    precision, mode, attention = variant.split("-")
    model = build(cfg, device, dtype, attention=attention)
    if precision == "fp8":
        from runner.train.fast.fp8_full import convert_full

        convert_full(model)
    if mode == "compiled" and device == "cuda":
        for layer in model.model.layers:
            layer.compile()
    return model


def part_full_speed(cfg, device, dtype, rows, length, warmup, timed) -> dict:
    out = {}
    for variant in FULL_VARIANTS:
        model = full_variant(cfg, device, dtype, variant)
        data = batches(random_ids(cfg["vocab_size"], rows * length * (warmup + timed)), rows, length, device,
                       sample=length // 4)
        res = train(model, data, warmup + timed, device, 1e-5, warmup)
        out[variant] = {k: res[k] for k in ("tokens_per_s", "peak_gib")}
        base = out["bf16-eager-varlen"]["tokens_per_s"]
        print(f"d full3b {variant}: {res['tokens_per_s']:,.0f} tokens/s ({res['tokens_per_s'] / base:.2f}x bf16 eager "
              f"varlen; rows {rows}x{length}, peak {res['peak_gib']} GiB)", flush=True)
        del model, data
        torch._dynamo.reset()   # compiled code holds the old layers (and their memory) otherwise
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return out


def curve_gap(bf16: list, fp8: list) -> float:
    def smooth(v):
        return [sum(v[max(0, i - WINDOW + 1):i + 1]) / len(v[max(0, i - WINDOW + 1):i + 1]) for i in range(len(v))]
    a, b = smooth(bf16), smooth(fp8)
    return max(abs(x - y) / abs(x) for x, y in zip(a, b))


def part_curves(name, cfg, device, dtype, ids, steps, rows, length) -> dict:
    """bf16 against fp8 over `steps` steps, same initial weights, same batches."""
    runs = {}
    if name == "lora8b":
        model = lora_model(cfg, device, dtype)
        init = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        for mode in ("bf16", "fp8-fp8bwd"):
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in init:
                        p.copy_(init[n])
            set_lora_mode(model, mode)
            runs[mode] = train(model, batches(ids, rows, length, device), steps, device, 2e-4)
        del model, init
    else:
        for variant in ("bf16-compiled-sdpa", "fp8-compiled-sdpa"):
            model = full_variant(cfg, device, dtype, variant)   # the same seed: the same initial weights
            runs[variant] = train(model, batches(ids, rows, length, device), steps, device, 2e-5)
            del model
            torch._dynamo.reset()
            if device == "cuda":
                torch.cuda.empty_cache()
    (ref, ref_run), (other, run) = runs.items()
    gap = curve_gap(ref_run["losses"], run["losses"])
    runs["max_smoothed_gap"], runs["within_tolerance"] = gap, gap <= TOLERANCE
    print(f"e {name}: {other} vs {ref} over {steps} steps: final loss {run['losses'][-1]:.4f} vs "
          f"{ref_run['losses'][-1]:.4f}, largest {WINDOW}-step mean gap {gap:.2%} (tolerance {TOLERANCE:.0%}): "
          f"{'ok' if gap <= TOLERANCE else 'OUTSIDE'}", flush=True)
    return runs


def plot(name: str, runs: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, run in runs.items():
        if isinstance(run, dict):
            ax.plot(run["losses"], label=label, linewidth=0.8)
    ax.set_title(f"{name}: bf16 vs fp8, largest {WINDOW}-step mean gap {runs['max_smoothed_gap']:.2%} "
                 f"(tolerance {TOLERANCE:.0%})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parts", default="q,a,b,c,d,e8,e3")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--data", type=Path, default=next((d for d in (ROOT / "shared" / "data", ROOT.parent / "shared" / "data")
                                                       if d.is_dir()), ROOT / "shared" / "data"))
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.smoke:
        sys.exit("fp8_check needs a CUDA GPU (sm89+); --smoke runs the code paths on the CPU")
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    cfg8, cfg3 = (SMOKE, SMOKE) if args.smoke else (LLAMA_8B, LLAMA_3B)
    steps = 3 if args.smoke else args.steps
    length, tokens = (32, 64) if args.smoke else (2048, 8192)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "smoke": args.smoke, "tolerance": TOLERANCE, "window": WINDOW}
    if "q" in parts:
        result["quantizer"] = part_quantizer(cfg8, device, dtype, tokens, 2 if args.smoke else 50)
    if "a" in parts:
        result["numerics"] = part_numerics(cfg8, device, dtype, tokens)
    if "b" in parts:
        result["microbench"] = part_microbench(cfg8, device, dtype, tokens, 2 if args.smoke else 20)
    if "c" in parts:
        result["lora8b_speed"] = part_lora_speed(cfg8, device, dtype, 2, length, 1 if args.smoke else 4,
                                                 2 if args.smoke else 10)
    if "d" in parts:
        result["full3b_speed"] = part_full_speed(cfg3, device, dtype, 2, length, 1 if args.smoke else 5,
                                                 2 if args.smoke else 10)
    ids = None
    for part, name, cfg in (("e8", "lora8b", cfg8), ("e3", "full3b", cfg3)):
        if part in parts:
            if ids is None:
                ids = text_ids(args.data, SMOKE["vocab_size"] if args.smoke else 32000)
            runs = part_curves(name, cfg, device, dtype, ids, steps, 4, 32 if args.smoke else 512)
            result.setdefault("curves", {})[name] = runs
            plot(name, runs, args.out / f"fp8_loss_{name}.png")
    path = args.out / f"fp8_check-{'_'.join(sorted(parts))}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
