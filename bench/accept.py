"""GPU acceptance runs of the training and distributed issues, on one GPU:

    python bench/accept.py RUN [RUN ...] [--data DIR] [--out DIR] [--steps N] [--smoke]

RUN: lora | full | qlora          1B-class random-init Llama, single device (qlora: nf4 + bf16 compute)
     fsdp_lora | fsdp_full        the same under backend fsdp (FSDP2, 1 process)
     ds2_lora | ds3_full | ds3_lora   backend deepspeed ZeRO 2 / 3 (1 process)
     quickstart                   cookbook/quickstart.yaml on the GPU (bf16)
Each run trains through `python -m runner train` (its own process), then the saved result is loaded
on one device (PeftModel / AutoModelForCausalLM) and its logits checked finite. Tokens/s comes from
the run's metrics.jsonl (real tokens), peak memory from torch.cuda.max_memory_allocated in the run.
Writes OUT/accept.json and OUT/accept.md (with device, versions, date)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import modeldir  # noqa: E402
from bench.catalog import SHAPES, TINY  # noqa: E402
from bench.probe import versions  # noqa: E402

BASE = """model: {{path: {model}, random_init: true, dtype: bfloat16}}
datasets:
  - {{path: {data}/alpaca_en_demo.json, format: alpaca}}
template: {{name: chatml}}
sequence: {{max_length: 1024, packing: true}}
training: {{max_steps: {steps}, micro_batch_size: 2, gradient_accumulation: 1, learning_rate: 1e-4,
           gradient_checkpointing: true, precision: bf16, warmup_steps: 0}}
tracking: {{log_every: 1, progress_bar: false}}
output: {{dir: {out}/{name}, overwrite: true}}
data: {{cache_dir: {cache}}}
"""
RUNS = {
    "lora": "adapter: {kind: lora, r: 16}\n",
    "full": "adapter: {kind: full}\ntraining: {optimizer: adamw_torch_fused}\n",
    "qlora": "adapter: {kind: lora, r: 16}\nquantization: {bits: 4, compute_dtype: bfloat16}\n",
    "fsdp_lora": "adapter: {kind: lora, r: 16}\ndistributed: {backend: fsdp}\n",
    "fsdp_full": "adapter: {kind: full}\ndistributed: {backend: fsdp, fsdp: {state_dict_type: full}}\n",
    "ds2_lora": "adapter: {kind: lora, r: 16}\ndistributed: {backend: deepspeed, deepspeed: {zero_stage: 2}}\n",
    "ds3_lora": "adapter: {kind: lora, r: 16}\ndistributed: {backend: deepspeed, deepspeed: {zero_stage: 3}}\n",
    "ds3_full": "adapter: {kind: full}\ndistributed: {backend: deepspeed, deepspeed: {zero_stage: 3}}\n",
}


def _merge_yaml(base: str, extra: str) -> str:
    import yaml

    data = yaml.safe_load(base)
    for key, value in (yaml.safe_load(extra) or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return yaml.safe_dump(data, sort_keys=False)


def _metrics(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss" in r and "step" in r]
    tps = [r["tokens_per_s"] for r in steps[1:] if r.get("tokens_per_s")]  # the first step compiles/warms up
    mem = [r["memory_mb"] / 1024 for r in steps if r.get("memory_mb")]
    return {"steps": len(steps), "first_loss": steps[0]["loss"] if steps else None,
            "last_loss": steps[-1]["loss"] if steps else None,
            "tokens_per_s_median": sorted(tps)[len(tps) // 2] if tps else None,
            "peak_memory_gib": max(mem, default=None), "attention": _attention(run_dir)}


def _attention(run_dir: Path) -> str | None:
    """The attention the run trained with (plan.runtime), and why when auto did not pick varlen."""
    runtime = json.loads((run_dir / "plan.json").read_text()).get("runtime", {})
    why = runtime.get("attn_implementation_auto")
    return runtime.get("attn_implementation") if not why else f"{runtime.get('attn_implementation')} ({why})"


def reload(run_dir: Path, env: dict | None = None) -> str:
    """The saved result loads on one device and gives finite logits."""
    code = (
        "import sys, torch, json; from pathlib import Path; d = Path(sys.argv[1])\n"
        "from transformers import AutoModelForCausalLM\n"
        "plan = json.loads((d / 'plan.json').read_text())\n"
        "if (d / 'adapter_config.json').exists() and plan['model'].get('random_init'):\n"
        "    from transformers import AutoConfig; from peft import PeftModel\n"
        "    torch.manual_seed(plan['training']['seed'])  # the random base, rebuilt as training built it\n"
        "    with torch.device('cuda' if torch.cuda.is_available() else 'cpu'):\n"
        "        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(plan['model']['path']), dtype=torch.bfloat16)\n"
        "    m = PeftModel.from_pretrained(base, d)\n"
        "elif (d / 'adapter_config.json').exists():\n"
        "    from peft import AutoPeftModelForCausalLM; m = AutoPeftModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16)\n"
        "else:\n"
        "    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16)\n"
        "m = m.to('cuda' if torch.cuda.is_available() else 'cpu').eval()\n"
        "ids = torch.tensor([[1, 2, 3, 4]], device=m.device)\n"
        "with torch.no_grad(): out = m(ids).logits\n"
        "assert torch.isfinite(out.float()).all(); print('reload ok', tuple(out.shape))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, timeout=900, env=env)
    return "ok" if proc.returncode == 0 else f"failed: {proc.stderr[-800:]}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), type=lambda v: str(Path(v).resolve()))
    p.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    p.add_argument("--work", default=str(REPO / ".runner_cache" / "accept"))
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--smoke", action="store_true", help="tiny model, CPU-friendly")
    args = p.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    shape = dict(SHAPES["llama32_1b"])
    if args.smoke:
        shape.update(TINY)
    model = modeldir.build(shape, work / "model-1b", Path(args.data), smoke=args.smoke)
    results = []
    for name in args.runs:
        start = time.time()
        if name == "quickstart":
            cfg = REPO / "cookbook" / "quickstart.yaml"
            overrides = [f"output.dir={work / 'quickstart'}", "output.overwrite=true", "model.dtype=bfloat16",
                         "training.precision=bf16", f"data.cache_dir={work / 'cache'}"]
            run_dir = work / "quickstart"
        else:
            text = _merge_yaml(BASE.format(model=model, data=args.data, steps=args.steps, out=work, name=name,
                                           cache=work / "cache"), RUNS[name])
            if args.smoke:
                text = _merge_yaml(text, "model: {dtype: float32}\ntraining: {precision: fp32, gradient_checkpointing: false}\n"
                                         "sequence: {max_length: 128}\n")
            cfg = work / f"{name}.yaml"
            cfg.write_text(text)
            overrides, run_dir = [], work / name
        proc = subprocess.run([sys.executable, "-m", "runner", "train", str(cfg), *overrides],
                              capture_output=True, text=True, timeout=1200)
        (out / f"accept-{name}.log").write_text(proc.stdout[-20000:] + "\n--- stderr ---\n" + proc.stderr[-20000:])
        row = {"run": name, "exit": proc.returncode, "seconds": round(time.time() - start, 1)}
        if proc.returncode == 0:
            row.update(_metrics(run_dir))
            row["reload"] = reload(run_dir)
        else:
            row["error_tail"] = proc.stderr[-1500:]
        print(json.dumps(row), flush=True)
        results.append(row)
    report = {"date": datetime.date.today().isoformat(), "device": _device(), "versions": versions(), "runs": results}
    (out / "accept.json").write_text(json.dumps(report, indent=2))
    lines = [f"# GPU acceptance runs ({report['date']}, {report['device']})", "",
             "versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), "",
             "| run | exit | steps | first loss | last loss | tokens/s (median) | peak GiB | attention | reload | s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['run']} | {r['exit']} | {r.get('steps', '')} | {_f(r.get('first_loss'))} | "
                     f"{_f(r.get('last_loss'))} | {_f(r.get('tokens_per_s_median'), 0)} | {_f(r.get('peak_memory_gib'), 1)} | "
                     f"{r.get('attention') or ''} | {(r.get('reload') or '')[:40]} | {r['seconds']} |")
    (out / "accept.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["exit"] == 0 and r.get("reload") == "ok" for r in results) else 1


def _f(v, digits=4):
    return "" if v is None else (f"{v:,.{digits}f}" if isinstance(v, float) else str(v))


def _device() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 - a report line, never a failure
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
