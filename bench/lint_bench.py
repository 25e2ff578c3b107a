"""How long `runner lint` takes on 20 configs in one process (the README's figure).

Lints the valid test fixtures plus variations of them (written to a temporary folder) with one
`python -m runner lint ...` call, repeated, timed with time.perf_counter around the subprocess, so the
figure includes interpreter start and imports, as a user or CI sees it. Writes bench/results/lint.md.

    python bench/lint_bench.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "fixtures" / "configs"
RESULTS = REPO / "bench" / "results" / "lint.md"
# Hashing the 98 MB GGUF measures the disk, not lint; it is cached after the first run anyway.
SKIP = {"package_model.yaml"}
N_CONFIGS = 20

VARIATIONS = [
    "training: {learning_rate: 1e-4, lr_scheduler: linear}",
    "adapter: {kind: lora, r: 32, dora: true}\ntraining: {epochs: 3}",
    "quantization: {bits: 4}\ntraining: {optimizer: paged_adamw_8bit}",
    "sequence: {max_length: 512, packing: true}\nval_size: 0.2\ntraining: {eval_every: 10}",
    "distributed: {backend: ddp, num_processes: 2}\ntracking: {wandb: {project: bench, mode: offline}}",
]


def config_set(tmp: Path) -> list[Path]:
    fixtures = sorted(p for p in CONFIGS.glob("*.yaml") if p.name not in SKIP)
    n_fixed = N_CONFIGS - len(VARIATIONS)
    if len(fixtures) < n_fixed:
        sys.exit(f"need {n_fixed} valid fixtures in {CONFIGS}, found {len(fixtures)}")
    head = (f"model: {{path: {CONFIGS / 'tiny-model'}}}\n"
            f"datasets:\n  - {{path: {CONFIGS / 'data' / 'alpaca_small.json'}, format: alpaca}}\n")
    made = []
    for i, body in enumerate(VARIATIONS):
        path = tmp / f"variation_{i}.yaml"
        path.write_text(head + body + "\n")
        made.append(path)
    return fixtures[:n_fixed] + made


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return f"{cpu}; {cores} cores usable; load average {load}; Python {platform.python_version()}"


def time_lint(paths: list[Path], repeats: int) -> list[float]:
    cmd = [sys.executable, "-m", "runner", "lint", *map(str, paths)]
    subprocess.run(cmd, cwd=REPO, capture_output=True)  # warm the page cache and .pyc files
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"lint failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/results alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = config_set(Path(tmp))
        times = time_lint(paths, args.repeats)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import runner.cli"], cwd=REPO, check=True)
        startup = time.perf_counter() - start
    median, best = statistics.median(times), min(times)
    summary = (f"runner lint, {len(paths)} configs in one process, {args.repeats} runs: "
               f"median {median:.3f} s, min {best:.3f} s (python + import runner.cli alone: {startup:.3f} s)")
    print(summary)
    if args.no_write:
        return 0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join([
        "# runner lint benchmark",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- machine: {machine()}",
        f"- command: `python bench/lint_bench.py --repeats {args.repeats}`",
        f"- configs: {len(paths)} ({len(paths) - len(VARIATIONS)} valid fixtures from tests/fixtures/configs "
        f"+ {len(VARIATIONS)} variations), linted by one `python -m runner lint` process",
        "- timing: time.perf_counter around the subprocess (interpreter start and imports included)",
        "",
        "| runs | median (s) | min (s) | max (s) | python + import runner.cli (s) |",
        "| --- | --- | --- | --- | --- |",
        f"| {args.repeats} | {median:.3f} | {best:.3f} | {max(times):.3f} | {startup:.3f} |",
        "",
        "Each run: " + ", ".join(f"{t:.3f}" for t in times) + " s",
        "",
    ]))
    print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
