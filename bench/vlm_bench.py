"""Vision-language LoRA throughput: runner against a hand-written transformers + peft baseline
(bench/baselines/vlm7b_baseline.py), one launch, each side in its own process.

    python bench/vlm_bench.py [--smoke] [--out bench/results] [--work DIR] [--mb 2] [--gc 1]
                              [--recipe fast|plain] [--runner-mb N] [--runner-gc N]
                              [--steps WARMUP,MEASURE] [--repeat 40]

The model: Qwen2.5-VL-7B's shape (28 layers x 3584, vision tower 32 x 1280), random init, bf16, as a
folder with config.json and a processor (runner.train.tiny_vlm's Qwen2.5-VL processor classes, a
small BPE tokenizer with Qwen's media tokens; the vocabulary rows stay 152,064). Data: the rows of
mllm_demo.json repeated `--repeat` times, images beside them. Both sides: LoRA r16 on the language
model's linear layers, vision tower and projector frozen, every image expanded by the processor per
batch. The baseline is what a user writes by hand: padded micro batches of --mb, checkpointing
--gc (1: on). runner runs cookbook/qwen2.5-vl-lora-fast.yaml's settings (--recipe fast: packed
micro batches of 8 samples, varlen attention, no recomputation, chunked loss, fused LoRA, fused
AdamW; --runner-mb / --runner-gc override its micro batch and checkpointing: 0 off, 1 all layers,
N > 1 the first N) or, --recipe plain, the baseline's own settings. tokens/s counts real
(unpadded) tokens: runner's from metrics.jsonl over the timed steps, the baseline's own. Writes
OUT/vlm7b.json and OUT/vlm7b.md. --smoke: the tiny Qwen2.5-VL of runner.train.tiny_vlm on the CPU
in fp32, 1 + 2 steps."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHAPE_7B = {"text": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6),
            "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           fullatt_block_indexes=[7, 15, 23, 31], window_size=112, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2)}


def build_model(directory: Path, smoke: bool) -> Path:
    from runner.train import tiny_vlm

    if (directory / "config.json").is_file():
        return directory
    config, processor = tiny_vlm.build("qwen2_5_vl", tiny_vlm.smoke_tokenizer)
    if not smoke:
        for key, value in SHAPE_7B["text"].items():
            setattr(config.text_config, key, value)
        if getattr(config.text_config, "layer_types", None):  # one entry per layer (checked from transformers 5.17)
            config.text_config.layer_types = ["full_attention"] * SHAPE_7B["text"]["num_hidden_layers"]
        for key, value in SHAPE_7B["vision"].items():
            setattr(config.vision_config, key, value)
        config.text_config.rope_scaling = {"type": "mrope", "mrope_section": [16, 24, 24]}
        config.text_config.head_dim = 128
        processor.image_processor.min_pixels, processor.image_processor.max_pixels = 3136, 12845056
        processor.image_processor.size = {"shortest_edge": 3136, "longest_edge": 12845056}
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.rename(directory)
    return directory


def build_data(work: Path, data_dir: Path, repeat: int) -> Path:
    folder = work / "data"
    if not (folder / "mllm_demo_data").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copytree(data_dir / "mllm_demo_data", folder / "mllm_demo_data")
    rows = json.loads((data_dir / "mllm_demo.json").read_text()) * repeat
    path = folder / "mllm_bench.json"
    path.write_text(json.dumps(rows, ensure_ascii=False))
    return path


FAST_RECIPE = REPO / "cookbook" / "qwen2.5-vl-lora-fast.yaml"


def fast_settings() -> dict:
    """The sections the fast recipe sets on top of cookbook/qwen2.5-vl-lora.yaml (its own keys)."""
    import yaml

    recipe = yaml.safe_load(FAST_RECIPE.read_text())
    return {k: v for k, v in recipe.items() if k in ("model", "adapter", "sequence", "training")}


def runner_config(work: Path, model: Path, data: Path, args, cuda: bool) -> Path:
    import yaml

    cfg = {"name": "vlm7b", "model": {"path": str(model), "random_init": True,
                                      "dtype": "bfloat16" if cuda else "float32"},
           "adapter": {"kind": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
           "datasets": [{"path": str(data), "format": "openai"}],
           "template": {"name": "tokenizer"}, "sequence": {"max_length": 8192, "packing": False},
           "vision": {"tower": "frozen", "projector": "frozen"},
           "data": {"cache_dir": str(work / "cache")},
           "training": {"stage": "sft", "micro_batch_size": args.mb, "gradient_accumulation": 1,
                        "max_steps": sum(args.steps), "learning_rate": 1e-4, "lr_scheduler": "constant",
                        "warmup_ratio": 0.0, "gradient_checkpointing": bool(args.gc),
                        "precision": "bf16" if cuda else "fp32"},
           "tracking": {"log_every": 1, "progress_bar": False},
           "output": {"dir": str(work / "run"), "overwrite": True}}
    if args.recipe == "fast":
        for section, values in fast_settings().items():
            cfg[section] = {**cfg[section], **values}
        cfg["training"].update(max_steps=sum(args.steps), precision="bf16" if cuda else "fp32")
    if not cuda:  # varlen's kernel is CUDA-only; the CPU smoke run takes the per-sample reference path
        cfg["model"]["attn_implementation"] = "sdpa"
    if args.runner_mb:
        cfg["training"]["micro_batch_size"] = args.runner_mb
    if args.runner_gc is not None:
        cfg["training"]["gradient_checkpointing"] = {0: False, 1: True}.get(args.runner_gc, args.runner_gc)
    path = work / "vlm7b.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def env() -> dict:
    out = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    return out


def run_runner(cfg: Path, work: Path, args) -> dict:
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "runner", "train", str(cfg)], env=env(), capture_output=True,
                          text=True, timeout=args.timeout)
    (work / "vlm7b-runner.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"status": "failed", "returncode": proc.returncode, "tail": (proc.stdout + proc.stderr)[-3000:]}
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("kind") == "train"]
    warm, last = args.steps[0], sum(args.steps)
    start = next(r for r in rows if r["step"] == warm)
    end = next(r for r in rows if r["step"] == last)
    seconds = end["elapsed_s"] - start["elapsed_s"]
    return {"status": "ok", "tokens_per_s": round((end["tokens"] - start["tokens"]) / seconds, 1),
            "timed_steps": last - warm, "seconds": round(seconds, 2),
            "peak_gib": round(max(r["memory_mb"] for r in rows) / 1024, 2), "wall_s": round(time.time() - started, 1),
            "command": f"runner train {cfg}"}


def run_baseline(model: Path, data: Path, work: Path, args) -> dict:
    extra = {"MODEL_DIR": str(model), "DATA": str(data), "MB": str(args.mb), "GC": str(args.gc),
             "WARMUP": str(args.steps[0]), "STEPS": str(args.steps[1])}
    proc = subprocess.run([sys.executable, str(HERE / "baselines" / "vlm7b_baseline.py")], env={**env(), **extra},
                          capture_output=True, text=True, timeout=args.timeout)
    (work / "vlm7b-baseline.log").write_text(proc.stdout + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"status": "failed", "returncode": proc.returncode, "tail": (proc.stdout + proc.stderr)[-3000:]}
    return {"status": "ok", **json.loads(lines[-1]), "env": extra}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--work", type=Path, default=REPO / ".runner_cache" / "bench-vlm")
    p.add_argument("--data", type=Path, default=None, help="the shared data folder (default ./shared/data, ../shared/data)")
    p.add_argument("--mb", type=int, default=2)
    p.add_argument("--gc", type=int, default=1)
    p.add_argument("--steps", default=None, help="WARMUP,MEASURE (default 5,20; smoke 1,2)")
    p.add_argument("--repeat", type=int, default=40)
    p.add_argument("--recipe", choices=("fast", "plain"), default="fast",
                   help="runner's settings: cookbook/qwen2.5-vl-lora-fast.yaml, or the baseline's own")
    p.add_argument("--runner-mb", type=int, default=None, help="runner's micro batch (default: the recipe's)")
    p.add_argument("--runner-gc", type=int, default=None, help="runner's checkpointing: 0, 1 (all) or N layers")
    p.add_argument("--timeout", type=float, default=560)
    args = p.parse_args(argv)
    args.steps = [int(x) for x in (args.steps or ("1,2" if args.smoke else "5,20")).split(",")]
    data_dir = args.data or next(d for d in (REPO / "shared" / "data", REPO.parent / "shared" / "data") if d.is_dir())
    import torch

    cuda = torch.cuda.is_available()
    work = args.work / ("smoke" if args.smoke else "full")
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(work / "model", args.smoke)
    data = build_data(work, data_dir, args.repeat)
    cfg = runner_config(work, model, data, args, cuda)
    run = run_runner(cfg, work, args)
    base = run_baseline(model, data, work, args)
    ratio = (run["tokens_per_s"] / base["tokens_per_s"]
             if run["status"] == base["status"] == "ok" and base["tokens_per_s"] else None)
    result = {"scenario": "vlm7b", "smoke": args.smoke, "device": torch.cuda.get_device_name() if cuda else "cpu",
              "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
              "same_launch": True, "recipe": args.recipe, "runner_config": str(cfg), "runner": run, "baseline": base,
              "ratio": ratio and round(ratio, 3),
              "goal": ">= 1.5x the baseline's tokens/s"}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "vlm7b-smoke" if args.smoke else "vlm7b"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    row = (f"| {name} | {result['device']} | {run.get('tokens_per_s')} | {base.get('tokens_per_s')} | "
           f"{result['ratio']} | {run.get('peak_gib')} | {base.get('peak_gib')} |")
    (args.out / f"{name}.md").write_text(row + "\n")
    print(row)
    return 0 if ratio is not None else 1


if __name__ == "__main__":
    sys.exit(main())
