"""data.streaming at scale, on the CPU: a generated jsonl file of SIZE MB trained through
`runner train` with streaming on, while this script samples the training process's resident memory.

    python bench/streaming_bench.py [--size-mb 1024] [--steps 30] [--buffer 200] [--baseline-mb 64] [--out bench/results] [--smoke]

Records (OUT/streaming.json and a line in OUT/streaming.md):
- launch → first optimizer step logged (seconds), cold: the file's digest is made in it (sha256 of the file);
- resident memory (VmRSS) at the first step, at the last, and its peak: flat means last ≈ first;
- the baseline, in the same launch: the whole pipeline (streaming off) on a BASELINE MB slice of the
  same rows, whose memory and start time grow with the file (the slice keeps it short).
The model is a tiny random Llama with a byte-level BPE (bench/modeldir.py): the data path is measured,
not the model. --smoke: an 8 MB file, 3 steps, a 4 MB baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "max_position_embeddings": 4096}


def generate(path: Path, size_mb: int, seed: int = 0) -> int:
    """Alpaca rows recombined from the shared demo file until the file holds size_mb MB."""
    if path.is_file() and path.stat().st_size >= size_mb * 2**20:
        return path.stat().st_size
    source = json.loads((SHARED / "alpaca_en_demo.json").read_text())
    rng, target, written = random.Random(seed), size_mb * 2**20, 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        while written < target:
            a, b = rng.choice(source), rng.choice(source)
            line = json.dumps({"instruction": a["instruction"], "input": a.get("input", ""), "output": b["output"]}) + "\n"
            f.write(line)
            written += len(line.encode())
    tmp.rename(path)
    return written


def rss_mb(pid: int) -> float | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run(name: str, model: Path, data: Path, work: Path, steps: int, streaming: bool, buffer: int) -> dict:
    out = work / f"run-{name}"
    import shutil

    shutil.rmtree(work / f"cache-{name}", ignore_errors=True)  # a cold start: the file's digest is not remembered yet
    cfg = {"name": name, "model": {"path": str(model), "dtype": "float32"},
           "adapter": {"kind": "lora", "r": 8},
           "datasets": [{"path": str(data), "format": "alpaca"}],
           "template": {"name": "chatml"}, "sequence": {"max_length": 512, "packing": True},
           "data": {"cache_dir": str(work / f"cache-{name}"), "streaming": streaming, "shuffle": True,
                    **({"stream_buffer": buffer} if streaming else {})},
           "training": {"max_steps": steps, "micro_batch_size": 8, "gradient_accumulation": 1, "precision": "fp32",
                        "learning_rate": 1e-3},
           "tracking": {"log_every": 1, "progress_bar": False},
           "output": {"dir": str(out), "overwrite": True}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "WANDB_MODE": "offline"}
    samples, start, wall = [], time.time(), time.time()
    proc = subprocess.Popen([sys.executable, "-m", "runner", "train", str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    metrics = out / "metrics.jsonl"
    first_step = None
    while proc.poll() is None:
        now, mem = time.time() - start, rss_mb(proc.pid)
        if mem is not None:
            samples.append((round(now, 2), round(mem, 1)))
        if (first_step is None and metrics.is_file() and metrics.stat().st_mtime >= wall
                and '"kind": "train"' in metrics.read_text()):
            first_step = (round(now, 2), round(mem or 0, 1))
        time.sleep(0.2)
    reader.join(timeout=5)
    total = time.time() - start
    peak = max((m for _, m in samples), default=None)
    last = samples[-1][1] if samples else None
    # memory once the first step ran, and from there to the end: the stream's flatness
    after = [m for t, m in samples if first_step and t >= first_step[0]]
    return {"name": name, "streaming": streaming, "exit": proc.returncode, "seconds": round(total, 1),
            "first_step_s": first_step[0] if first_step else None,
            "rss_first_step_mb": first_step[1] if first_step else None,
            "rss_after_first_step_max_mb": max(after) if after else None, "rss_last_mb": last, "rss_peak_mb": peak,
            "rss_samples": samples[::max(1, len(samples) // 200)], "log_tail": "".join(log[-15:])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=int, default=1024)
    p.add_argument("--baseline-mb", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--buffer", type=int, default=200,
                   help="data.stream_buffer: small, so that the measured steps read several buffers")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--work", default=str(ROOT / ".runner_cache" / "bench-streaming"))
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.size_mb, args.baseline_mb, args.steps = 8, 4, 3
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "bench"))
    import modeldir

    model = modeldir.build(TINY, work / "tiny-model", SHARED, smoke=True)
    big = work / f"rows-{args.size_mb}mb.jsonl"
    size = generate(big, args.size_mb)
    small = work / f"rows-{args.baseline_mb}mb.jsonl"
    generate(small, args.baseline_mb)
    result = {"file_mb": round(size / 2**20, 1), "baseline_file_mb": args.baseline_mb, "steps": args.steps,
              "cpus": os.cpu_count(), "smoke": args.smoke,
              "stream_buffer": args.buffer,
              "runner": run("streaming", model, big, work, args.steps, streaming=True, buffer=args.buffer),
              "baseline": run("whole", model, small, work, args.steps, streaming=False, buffer=args.buffer)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "streaming.smoke" if args.smoke else "streaming"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    r, b = result["runner"], result["baseline"]
    row = (f"| streaming {result['file_mb']} MB | first step {r['first_step_s']} s | RSS at first step "
           f"{r['rss_first_step_mb']} MB, after it at most {r['rss_after_first_step_max_mb']} MB, peak {r['rss_peak_mb']} MB "
           f"| whole pipeline on {args.baseline_mb} MB: first step {b['first_step_s']} s, peak {b['rss_peak_mb']} MB |")
    (out / f"{name}.md").write_text(row + "\n")
    print(row)
    return 0 if r["exit"] == 0 and b["exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
