"""`runner serve` throughput: the same chat requests sent all at once (batched on the device by the
continuous-batching engine) and one by one, total generated tokens/s of each.

    python bench/serve_bench.py MODEL_DIR [--requests 32] [--max-tokens 256] [--out bench/results]
    python bench/serve_bench.py --random llama32_1b --work /tmp/bench     # a Llama-3.2-1B-shaped folder
    python bench/serve_bench.py --smoke                                    # CPU, tiny model, 4 requests

MODEL_DIR is any Hugging Face model folder with a chat template (a run directory works too).
`--random SHAPE` builds one from bench/catalog.py's shapes with random bf16 weights and the bench
tokenizer (bench/modeldir.py): no hub access needed, and a random model rarely says end-of-turn, so
nearly every answer runs to --max-tokens and both sides generate the same amount of work.

Requests are greedy (temperature 0) and identical on both sides; the server gets an untimed
warm-up first (one request, then one short concurrent round). The client is the standard library
(threads and urllib), so nothing beyond runner's own `serve` extra is needed on the GPU box. Writes OUT/serve.json (both figures, token
counts, device, versions, date, command) and OUT/serve.md (one table row)."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
BANNER = re.compile(r"serving (\S+) at (http://\S+/v1)")
SMOKE_SHAPE = "tiny"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", nargs="?", help="a model folder (or run directory) to serve")
    ap.add_argument("--random", metavar="SHAPE", help="build a random-weight model of this bench/catalog.py shape")
    ap.add_argument("--smoke", action="store_true", help="CPU check: a tiny random model, 4 requests, 16 tokens")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--max-batch", type=int, default=None, help="runner serve --max-batch (default: the requests)")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="shared data (prompts, tokenizer)")
    ap.add_argument("--work", default=str(REPO / ".runner_cache" / "bench"), help="where built models go")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.random = args.random or SMOKE_SHAPE
        args.requests, args.max_tokens = min(args.requests, 4), min(args.max_tokens, 16)
    if bool(args.model_dir) == bool(args.random):
        ap.error("give a MODEL_DIR or --random SHAPE (or --smoke)")
    model_dir = Path(args.model_dir) if args.model_dir else random_model(args.random, Path(args.work), Path(args.data))
    prompts = load_prompts(Path(args.data), args.requests)

    server = start_server(model_dir, args.max_batch or args.requests)
    try:
        # Warm-up, untimed: first-call allocations and kernels, and the batch shapes (graphs) of a full round.
        chat(server, prompts[0], args.max_tokens)
        timed(server, prompts, min(args.max_tokens, 16), workers=len(prompts))
        concurrent = timed(server, prompts, args.max_tokens, workers=len(prompts))
        sequential = timed(server, prompts, args.max_tokens, workers=1)
    finally:
        server["proc"].terminate()
        code = server["proc"].wait(120)
    result = {
        "bench": "serve", "model_dir": str(model_dir), "model": server["name"], "shape": args.random,
        "requests": len(prompts), "max_tokens": args.max_tokens, "temperature": 0,
        "concurrent": concurrent, "sequential": sequential,
        "speedup": round(concurrent["tokens_per_s"] / sequential["tokens_per_s"], 2) if sequential["tokens_per_s"] else None,
        "server_exit_code": code, "device": device_name(), "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "serve-smoke" if args.smoke else "serve"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown_row(result) + "\n")
    print(markdown_row(result))
    return 0 if code == 0 else 1


def random_model(shape_name: str, work: Path, data: Path) -> Path:
    """A model folder of the shape with random weights (built once, then reused)."""
    import catalog
    import modeldir

    smoke = shape_name == SMOKE_SHAPE
    shape = catalog.TINY if smoke else catalog.SHAPES[shape_name]
    directory = modeldir.build(shape, work / f"serve-{shape_name}", data, smoke)
    if not any(directory.glob("*.safetensors")):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(directory)
        torch.manual_seed(0)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(directory)
    return directory


def load_prompts(data: Path, n: int) -> list[str]:
    rows = json.loads((data / "alpaca_en_demo.json").read_text())
    prompts = [r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "") for r in rows[:n]]
    if len(prompts) < n:
        sys.exit(f"{data / 'alpaca_en_demo.json'} has fewer than {n} rows")
    return prompts


def start_server(model_dir: Path, max_batch: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RUNNER_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "runner", "serve", str(model_dir), "--port", "0",
                             "--max-batch", str(max_batch)], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    found, lines = {}, []

    def read():
        for line in proc.stderr:
            lines.append(line)
            match = BANNER.search(line)
            if match and not found:
                found.update(name=match.group(1), url=match.group(2))
                ready.set()
        ready.set()

    ready = threading.Event()
    threading.Thread(target=read, daemon=True).start()
    ready.wait(900)
    if not found:
        proc.kill()
        sys.exit("runner serve did not start:\n" + "".join(lines[-40:]))
    return {"proc": proc, **found}


def chat(server: dict, prompt: str, max_tokens: int) -> dict:
    body = json.dumps({"model": server["name"], "messages": [{"role": "user", "content": prompt}],
                       "temperature": 0, "max_tokens": max_tokens}).encode()
    request = urllib.request.Request(f"{server['url']}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=1800) as reply:
        return json.loads(reply.read())["usage"]


def timed(server: dict, prompts: list[str], max_tokens: int, workers: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        usages = list(pool.map(lambda p: chat(server, p, max_tokens), prompts))
    seconds = time.perf_counter() - start
    generated = sum(u["completion_tokens"] for u in usages)
    return {"seconds": round(seconds, 3), "completion_tokens": generated,
            "prompt_tokens": sum(u["prompt_tokens"] for u in usages),
            "tokens_per_s": round(generated / seconds, 1), "workers": workers}


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


def versions() -> dict:
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "starlette", "uvicorn"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


def markdown_row(r: dict) -> str:
    c, s = r["concurrent"], r["sequential"]
    return (f"| serve {r['model']} | {r['requests']} requests x {r['max_tokens']} tokens | "
            f"{c['tokens_per_s']:,.1f} tok/s concurrent ({c['completion_tokens']} tokens, {c['seconds']:.1f} s) | "
            f"{s['tokens_per_s']:,.1f} tok/s one by one ({s['completion_tokens']} tokens, {s['seconds']:.1f} s) | "
            f"x{r['speedup']} | {r['device']} | {r['date'][:10]} |")


if __name__ == "__main__":
    sys.exit(main())
