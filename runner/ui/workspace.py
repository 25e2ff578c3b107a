"""The workspace the UI serves: every path a request names is confined to it (runner.config.paths),
and its configs and run directories are found by walking it. A run's state is read from the files
runner writes (RUN_COMPLETE, complete checkpoints, the lock), so a reload, a second tab or a run
started from a terminal all show the same thing."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import runner
from runner import rundir
from runner.config.paths import confine
from runner.errors import UserError

UI_DIR = ".runner-ui"  # the UI's own files: job logs, uploads, the data cache of runs it starts
COOKBOOK = Path(runner.__file__).resolve().parents[1] / "cookbook"
MAX_DEPTH = 5
SKIP_DIRS = {".git", "node_modules", "__pycache__", "checkpoints", "wandb", ".runner-previous"}


class Workspace:
    def __init__(self, root):
        self.root = Path(root).resolve(strict=True)
        if not self.root.is_dir():
            raise UserError(f"--workspace {root} is not a folder")

    def path(self, given, key: str = "path") -> Path:
        """A request's path, confined: `..`, absolute paths elsewhere and symlinks out are refused."""
        if not isinstance(given, str):
            raise UserError(f"{key}: a path string is required")
        return confine(given, self.root, key=key)

    def rel(self, path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    def ui_dir(self, *parts) -> Path:
        path = self.root.joinpath(UI_DIR, *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def walk(self):
        """(folder, subfolders, files) under the root, depth-limited, not inside run directories."""
        for folder, dirs, files in os.walk(self.root):
            depth = len(Path(folder).relative_to(self.root).parts)
            is_run = rundir.OWNER_MARKER in files
            dirs[:] = [] if is_run or depth >= MAX_DEPTH else sorted(d for d in dirs if d not in SKIP_DIRS)
            yield Path(folder), is_run, files

    def configs(self) -> list[str]:
        found = []
        for folder, is_run, files in self.walk():
            if not is_run and UI_DIR not in folder.relative_to(self.root).parts:
                found += [self.rel(folder / f) for f in files if f.endswith((".yaml", ".yml")) and not f.startswith(".")]
        return sorted(found)

    def run_dirs(self) -> list[Path]:
        return [folder for folder, is_run, _ in self.walk() if is_run]

    def sweeps(self) -> list[dict]:
        """Every sweep folder (runner sweep's trials.json) with its trial table."""
        from runner.sweep.report import TABLE_JSON

        out = []
        for folder, is_run, files in self.walk():
            if not is_run and TABLE_JSON in files:
                try:
                    table = json.loads((folder / TABLE_JSON).read_text())
                except ValueError:
                    continue
                out.append({"id": self.rel(folder), **table})
        return out


def recipes() -> list[dict]:
    """The cookbook's recipes with their first comment line as a summary."""
    out = []
    if COOKBOOK.is_dir():
        for path in sorted(COOKBOOK.glob("*.yaml")):
            first = next((line for line in path.read_text().splitlines() if line.startswith("#")), "#")
            out.append({"name": path.stem, "summary": first.lstrip("# ").strip()})
    return out


def recipe_path(name: str) -> Path:
    path = COOKBOOK / f"{name}.yaml"
    if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
        raise UserError(f"no cookbook recipe named {name!r}", hint="pick one of GET /api/recipes")
    return path


def metrics_rows(run_dir: Path, after: int = 0) -> list[dict]:
    """metrics.jsonl lines from the `after`-th on; a torn last line (a write in progress) is skipped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines()[after:]:
        try:
            row = json.loads(line)
        except ValueError:
            break
        if isinstance(row, dict):
            rows.append(row)
    return rows


def total_steps(run_dir: Path) -> int | None:
    """The optimizer steps the run will take, as its launch decided (plan.json's runtime)."""
    plan = rundir.read_stored_plan(run_dir) or {}
    return (plan.get("runtime") or {}).get("total_steps")


def run_status(run_dir: Path, job=None) -> str:
    if job is not None and job.running:
        return "running"
    if (run_dir / rundir.RUN_MARKER).is_file():
        return "finished"
    from runner.rundir.lock import read_holder

    holder = read_holder(run_dir)
    if job is None and holder.get("pid") and _alive(holder["pid"]) and holder.get("host") == os.uname().nodename:
        return "running"
    if rundir.complete_checkpoints(run_dir):
        return "interrupted"
    return "failed"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, ValueError):
        return False


def run_summary(ws: Workspace, run_dir: Path, job=None) -> dict:
    plan = rundir.read_stored_plan(run_dir) or {}
    complete = run_dir / rundir.RUN_MARKER
    checkpoints = [p.name for p in rundir.complete_checkpoints(run_dir)]
    rows = metrics_rows(run_dir)
    last = next((r for r in reversed(rows) if r.get("kind") == "train"), {})
    stamp = (run_dir / "plan.json") if (run_dir / "plan.json").is_file() else run_dir
    return {"id": ws.rel(run_dir), "name": plan.get("name") or run_dir.name, "status": run_status(run_dir, job),
            "hashes": {k: v for k, v in (plan.get("hashes") or {}).items() if isinstance(v, str)},
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp.stat().st_mtime)),
            "finished": (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(complete.stat().st_mtime))
                         if complete.is_file() else None),
            "checkpoints": checkpoints, "step": last.get("step"), "loss": last.get("loss"),
            "adapter": (run_dir / "adapter_config.json").is_file(),
            "job": job.summary() if job is not None else None}
