"""Result files of bench/harness.py: step-time statistics, the JSON result, its markdown row, and the
scenario's row in bench/RESULTS.md."""
from __future__ import annotations

import json
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HEADER = ("| scenario | runner tokens/s | baseline tokens/s | ratio | runner peak alloc / reserved GiB | "
          "baseline peak alloc / reserved GiB | runner TFLOP/s (MFU) | baseline TFLOP/s (MFU) | "
          "step p50 runner / baseline s | device | date |")
RULE = "|" + "---|" * HEADER.count(" | ") + "---|"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: with 20 steps, p90 is the 18th fastest)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def step_stats(times: list[float]) -> dict:
    if not times:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "mean": None, "min": None, "max": None}
    r = lambda v: round(v, 4)  # noqa: E731
    return {"n": len(times), "p50": r(percentile(times, 50)), "p90": r(percentile(times, 90)),
            "p99": r(percentile(times, 99)), "mean": r(sum(times) / len(times)), "min": r(min(times)),
            "max": r(max(times))}


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a and b else None


def _num(v, fmt="{:,.0f}") -> str:
    return "–" if v is None else fmt.format(v)


def _side_cell(side: dict, key: str) -> str:
    if side.get("status") != "ok":
        return side.get("status", "–")
    return _num(side.get(key))


def _memory(side: dict) -> str:
    if side.get("status") != "ok":
        return "–"
    alloc, reserved = side.get("peak_allocated_gib"), side.get("peak_reserved_gib")
    if alloc is None and side.get("peak_rss_gib") is not None:
        return f"{side['peak_rss_gib']:.2f} (CPU RSS)"
    return f"{_num(alloc, '{:.1f}')} / {_num(reserved, '{:.1f}')}"


def _tflops(side: dict) -> str:
    if side.get("status") != "ok" or side.get("tflops") is None:
        return "–"
    return f"{side['tflops']:.1f} ({side['mfu'] * 100:.1f}%)"


def markdown_row(result: dict) -> str:
    run, base = result["runner"], result["baseline"]
    p50 = f"{_num(run.get('step_time_s', {}).get('p50'), '{:.3f}')} / {_num(base.get('step_time_s', {}).get('p50'), '{:.3f}')}"
    name = result["scenario"] + (" (smoke)" if result.get("smoke") else "")
    rate = _num(result.get("ratio_tokens_per_s"), "{:.2f}×")
    if result.get("same_launch") is False and result.get("ratio_tokens_per_s") is not None:
        rate += " (sides from two launches)"  # --side runner / baseline kept the other side's result
    cells = [name, _side_cell(run, "tokens_per_s"), _side_cell(base, "tokens_per_s"), rate, _memory(run), _memory(base), _tflops(run),
             _tflops(base), p50, result.get("device") or "–", result["date"][:10]]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def repo_relative(text: str) -> str:
    """Result text with the checkout's own path dropped (results are committed: no machine paths)."""
    return text.replace(str(REPO) + "/", "")


def write_result(result: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = result["scenario"] + ("-smoke" if result.get("smoke") else "")
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(repo_relative(json.dumps(result, indent=1)) + "\n")
    md_path.write_text(f"{HEADER}\n{RULE}\n{markdown_row(result)}\n\n{result['flops_formula']}\n")
    return json_path, md_path


def update_results_table(path: Path, result: dict) -> bool:
    """Replace the scenario's row of the table in `path` (bench/RESULTS.md); False when it has none."""
    lines = path.read_text().splitlines()
    prefix = f"| {result['scenario']} |"
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            lines[i] = markdown_row(result)
            path.write_text("\n".join(lines) + "\n")
            return True
    return False


def main(argv=None) -> int:
    """`python bench/report.py RESULT.json... --results bench/RESULTS.md`: put results fetched from a GPU
    run into the table (and print their rows)."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("results_json", nargs="+", type=Path)
    p.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    args = p.parse_args(argv)
    missing = 0
    for path in args.results_json:
        result = json.loads(path.read_text())
        print(markdown_row(result))
        if result.get("smoke"):
            print(f"{path}: a --smoke result, not put in {args.results}")
        elif not update_results_table(args.results, result):
            print(f"{path}: {args.results} has no row for {result['scenario']}")
            missing += 1
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
