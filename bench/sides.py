"""One side of a benchmark launch as a process: its environment, run under bench/probe.py with each
output line stamped, and what is kept of its measurement or its failure (bench/harness.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TAIL = 3000  # characters of a failed side's log kept in the result


def first_existing(*candidates: Path) -> Path:
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return candidates[0]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    # The checked-out runner is what is measured, ahead of any installed copy.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("WANDB_MODE", "disabled")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def run_probed(cmd: list[str], *, probe_out: Path, warmup: int, log: Path, env: dict, cwd: Path | None = None,
               timeout: float | None = None) -> tuple[dict, str]:
    """Run `cmd` (a script or `-m module ...`) under the probe; returns (probe result, its output).
    The log gets each output line with the seconds since the start, so a run cut off by the timeout
    still shows where its time went (building a model, loading it, stepping)."""
    probe_out.unlink(missing_ok=True)
    full = [sys.executable, str(HERE / "probe.py"), "--out", str(probe_out), "--warmup", str(warmup)]
    full += (["--cwd", str(cwd)] if cwd else []) + cmd
    output, stamped, code = run_stamped(full, env=env, timeout=timeout)
    if code == 124:
        note = f"\n[harness] timed out after {timeout} s"
        output, stamped = output + note, stamped + note
    log.write_text(stamped)
    probe = json.loads(probe_out.read_text()) if probe_out.is_file() else {}
    probe.setdefault("exit_code", code)
    if code and not probe.get("exit_code"):
        probe["exit_code"] = code
    return probe, output


def run_stamped(cmd: list[str], *, env: dict, timeout: float | None) -> tuple[str, str, int]:
    """(output, the same with each line prefixed by its elapsed seconds, exit code; 124 on timeout)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    plain: list[str] = []
    stamped: list[str] = []

    def pump():
        for raw in proc.stdout:  # bytes, split at "\n" only: a progress bar's "\r" stays in its line
            line = raw.decode(errors="replace")
            plain.append(line)
            stamped.append(f"[{time.monotonic() - start:7.1f} s] {line}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = 124
    reader.join(timeout=10)
    return "".join(plain), "".join(stamped), code


def measured_side(probe: dict, times: list[float]) -> dict:
    keep = ("device", "peak_allocated_gib", "peak_reserved_gib", "peak_rss_gib", "optimizer_steps",
            "wall_s", "first_step_s")
    return {**{k: probe.get(k) for k in keep}, "step_time_s": report.step_stats(times),
            "_probe_versions": probe.get("versions")}


def failed(status: str, output: str, probe: dict) -> dict:
    if status == "failed" and "OutOfMemoryError" in output:
        status = "oom"
    return {"status": status, "exit_code": probe.get("exit_code"), "error": probe.get("error"),
            "log_tail": output[-TAIL:]}
