"""Hostile data through `runner preprocess` in-process: >= 100 seeded mutations of valid rows
(truncated JSON, wrong types, binary junk, NUL bytes, latin-1 / UTF-16 text, huge numbers, deep
nesting, JSON nested ~100k deep inside a field, missing fields, empty files) each end in exit 2
with `file:line` and no traceback (or, with on_bad_row: skip, a printed skip count), and nothing is
written outside the run and cache dirs. A single ~200 MB JSON line is refused with a clear message
while peak memory stays bounded."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_data_support import tiny_model_dir, write_config  # noqa: E402

VALID = {
    "alpaca": [{"instruction": "Say hi", "input": "", "output": "Hi there, café!"},
               {"instruction": "Add 2 and 3", "input": "", "output": "5"}],
    "sharegpt": [{"conversations": [{"from": "human", "value": "Who are you?"}, {"from": "gpt", "value": "Nova."}]},
                 {"conversations": [{"from": "human", "value": "Ça va?"}, {"from": "gpt", "value": "Oui."}]}],
}


def _rows_text(rows, suffix):
    if suffix == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return json.dumps(rows, ensure_ascii=False, indent=1)


def _wrong_type(row, rng):
    row = json.loads(json.dumps(row))
    key = rng.choice(list(row))
    row[key] = rng.choice([123, None, True, {"x": 1}, [1, 2]])
    return row


def _missing(row, rng):
    row = dict(row)
    row.pop(rng.choice(["conversations"] if "conversations" in row else ["instruction", "output"]))
    return row


def mutate(fmt: str, suffix: str, kind: str, rng: random.Random) -> bytes:
    """One malformed file: valid rows of `fmt` with one seeded mutation."""
    rows = [dict(r) for r in VALID[fmt] * 3]
    good = _rows_text(rows, suffix).encode()
    if kind == "truncated":
        return good[: rng.randrange(5, len(good) - 5)]
    if kind == "wrong_type":
        rows[rng.randrange(len(rows))] = _wrong_type(rows[0], rng)
        return _rows_text(rows, suffix).encode()
    if kind == "missing":
        rows[rng.randrange(len(rows))] = _missing(rows[0], rng)
        return _rows_text(rows, suffix).encode()
    if kind == "junk":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
    if kind == "junk_line":
        at = good.index(b"\n") + 1
        return good[:at] + bytes(rng.randrange(256) for _ in range(50)).replace(b"\n", b"") + b"\n" + good[at:]
    if kind == "nul":
        at = rng.randrange(1, len(good) - 1)
        return good[:at] + b"\x00" * rng.randrange(1, 5) + good[at:]
    if kind == "latin1":
        return _rows_text(rows, suffix).encode("latin-1", errors="replace")
    if kind == "utf16":
        return _rows_text(rows, suffix).encode("utf-16")
    if kind == "huge_number":
        rows[1] = {**rows[1], rng.choice(list(rows[1])): rng.choice([10**400, float("1e308") * 10])}
        return _rows_text(rows, suffix).encode()
    if kind == "deep":
        depth = rng.choice([5_000, 50_000])
        return ("[" * depth + "]" * depth + "\n").encode() + good
    if kind == "empty":
        return rng.choice([b"", b"\n\n", b"   ", b"[]", b"{}\n"])
    if kind == "deep_field":  # JSON text nested ~100k deep inside a field the reader parses
        field = "conversations" if fmt == "sharegpt" else "history"
        rows[rng.randrange(len(rows))] = {**rows[0], field: "[" * 100_000 + "]" * 100_000}
        return _rows_text(rows, suffix).encode()
    raise ValueError(kind)


KINDS = ["truncated", "wrong_type", "missing", "junk", "junk_line", "nul", "latin1", "utf16", "huge_number",
         "deep", "empty"]
LOCATION = re.compile(r"\.jsonl?:\d+")


def _snapshot(root: Path, skip: tuple) -> set:
    return {p for p in root.rglob("*") if not any(str(p).startswith(str(s)) for s in skip)}


def test_malformed_files_exit_2_with_a_location_and_write_nowhere_else(tmp_path, capsys):
    from runner.cli import main

    model = {"path": str(tiny_model_dir(tmp_path))}
    rng = random.Random(9)
    cases = [(fmt, suffix, kind, i) for i in range(5) for fmt in VALID for suffix in (".jsonl", ".json")
             for kind in KINDS]
    cases = cases[:: max(1, len(cases) // 120)]
    cases += [(fmt, suffix, "deep_field", 0) for fmt in VALID for suffix in (".jsonl", ".json") for _ in range(2)]
    assert len(cases) >= 100
    cwd_before = {p.name for p in Path.cwd().iterdir()}
    failures = []
    for n, (fmt, suffix, kind, _) in enumerate(cases):
        case = tmp_path / f"case{n}"
        case.mkdir()
        data = case / f"bad_{kind}{suffix}"
        data.write_bytes(mutate(fmt, suffix, kind, rng))
        skip = n % 5 == 4
        ds = {"path": str(data), "format": fmt, **({"on_bad_row": "skip"} if skip else {})}
        cfg = write_config(case, [ds], model=model, template={"name": "chatml"},
                           output={"dir": str(case / "run")})
        before = _snapshot(tmp_path, (case / "cache", case / "run"))
        code = main(["preprocess", str(cfg)])
        out = capsys.readouterr()
        text = out.out + out.err
        written = _snapshot(tmp_path, (case / "cache", case / "run")) - before
        problem = None
        if "Traceback" in text:
            problem = "traceback"
        elif code == 0 and not (skip and "skipped" in text):
            problem = "accepted"
        elif code not in (0, 2):
            problem = f"exit {code}"
        elif code == 2 and skip and "no training rows are left" in text:
            pass  # every row skipped: the documented outcome
        elif code == 2 and not (LOCATION.search(text) or str(data) in text):
            problem = "no location"
        elif written:
            problem = f"wrote {sorted(map(str, written))}"
        if problem:
            failures.append(f"{data.name} ({fmt}, skip={skip}): {problem}: {text[-300:]!r}")
    assert {p.name for p in Path.cwd().iterdir()} == cwd_before
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures[:10])


@pytest.mark.slow
def test_a_200_mb_line_is_refused_with_bounded_memory(tmp_path, capsys):
    from runner.cli import main
    from runner.data.readers import MAX_LINE_BYTES

    data = tmp_path / "long.jsonl"
    good = json.dumps(VALID["alpaca"][0]) + "\n"
    with open(data, "w") as fh:
        fh.write(good)
        fh.write('{"instruction": "')
        block = "a" * 2**20
        for _ in range(200):
            fh.write(block)
        fh.write('", "output": "x"}\n')
        fh.write(good)
    assert data.stat().st_size > 200 * 2**20 > MAX_LINE_BYTES
    model = {"path": str(tiny_model_dir(tmp_path))}
    cfg = write_config(tmp_path, [{"path": str(data), "format": "alpaca"}], model=model, template={"name": "chatml"})
    # In a process of its own, reporting its own address space's peak (VmHWM starts afresh at exec;
    # getrusage's maxrss would carry the parent's size at fork, i.e. whatever the tests before took).
    probe = ("import re, sys\nfrom runner.cli import main\ncode = main(['preprocess', sys.argv[1]])\n"
             "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
             "print('peak_kb', hwm)\nsys.exit(code)\n")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", probe, str(cfg)], capture_output=True, text=True, cwd=repo,
                         env={**os.environ, "PYTHONPATH": str(repo)}, timeout=600)
    err = out.stderr
    assert out.returncode == 2 and "Traceback" not in err, err[-2000:]
    assert f"long.jsonl:2: line longer than {MAX_LINE_BYTES // 2**20} MiB" in err
    peak_mb = int(out.stdout.split("peak_kb")[1].split()[0]) / 1024
    assert peak_mb < 1500, f"peak RSS {peak_mb:.0f} MB"
