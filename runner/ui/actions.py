"""What the Train, Runs, Evaluate and Export pages start: the CLI's own commands as subprocesses
(runner.ui.jobs), after confining every path the config or the request names to the workspace."""
from __future__ import annotations

import os
import re
from pathlib import Path

from runner.errors import UserError
from runner.ui.workspace import UI_DIR, Workspace, metrics_rows, run_summary

TASK_NAME = re.compile(r"^[A-Za-z0-9_.,-]+$")
REPO_ID = re.compile(r"^([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def planned_run(ws: Workspace, config: str, smoke: bool) -> tuple[Path, list[str]]:
    """The run directory a config trains into and the overrides the UI adds, after confining the
    config's local paths: datasets, a local model, the data cache and output.dir stay inside."""
    from runner.plan.resolve import make_plan

    path = ws.path(config, "config")
    rel = os.path.relpath(path, ws.root)
    overrides = []
    plan = make_plan(rel)
    if not _inside(ws, plan.data.cache_dir):  # the default cache is in the user's home: keep it in the workspace
        overrides.append(f"data.cache_dir={ws.ui_dir('cache')}")
    if smoke:
        from runner.train.smoke import smoke_overrides

        plan = make_plan(rel, overrides + smoke_overrides(rel, overrides))
    for key, value in _local_paths(plan):
        ws.path(str(value), key)
    return Path(plan.output.dir), overrides


def _inside(ws: Workspace, value) -> bool:
    try:
        ws.path(str(value))
        return True
    except UserError:
        return False


def _local_paths(plan):
    # A model named by its package (`package:NAME`) or hub id is a name, not a workspace path.
    given = str((plan.config.get("model") or {}).get("path", ""))
    if plan.model.source == "local" and not given.startswith("package:"):
        yield "model.path", plan.model.path
    for group in ("datasets", "eval_datasets"):
        for i, ds in enumerate(getattr(plan.data, group)):
            if ds.source == "local":
                yield f"{group}.{i}.path", ds.path
    yield "data.cache_dir", plan.data.cache_dir
    yield "output.dir", plan.output.dir


def start_train(ws: Workspace, jobs, config: str, *, smoke: bool = False, overwrite: bool = False,
                launch: bool = False):
    run_dir, overrides = planned_run(ws, config, smoke)
    argv = ["launch" if launch else "train", os.path.relpath(ws.path(config), ws.root), *overrides]
    argv += ["--smoke"] if smoke and not launch else []
    argv += ["--overwrite"] if overwrite else []
    return jobs.start("train", argv, run=ws.rel(run_dir), config=config)


def resume(ws: Workspace, jobs, run: str):
    run_dir = run_directory(ws, run)
    last = jobs.last_train(ws.rel(run_dir))
    if last is None:
        raise UserError(f"{run} was not started from this UI: resume it with the command that started it",
                        hint="runner train CONFIG resumes from the newest complete checkpoint")
    argv = [a for a in last.argv if a != "--overwrite"]  # a resume never replaces the run
    return jobs.start("train", argv, run=last.run, config=last.config)


def run_directory(ws: Workspace, run: str) -> Path:
    path = ws.path(run, "run")
    if not (path / ".runner-run").is_file():
        raise UserError(f"run: {run} is not a run directory of the workspace", hint="GET /api/runs lists them")
    return path


def list_runs(ws: Workspace, jobs) -> list[dict]:
    return [run_summary(ws, d, jobs.for_run(ws.rel(d))) for d in ws.run_dirs()]


def run_detail(ws: Workspace, jobs, run: str) -> dict:
    from runner.rundir import read_stored_plan

    run_dir = run_directory(ws, run)
    info = run_summary(ws, run_dir, jobs.for_run(ws.rel(run_dir)))
    card = run_dir / "README.md"
    info.update(plan=read_stored_plan(run_dir), card=card.read_text(errors="replace") if card.is_file() else None,
                results=_results(run_dir))
    return info


def _results(run_dir: Path) -> dict:
    import json

    out = {}
    for name in ("eval/summary.json", "predict/metrics.json"):
        path = run_dir / name
        if path.is_file():
            try:
                out[name] = json.loads(path.read_text())
            except ValueError:
                pass
    return out


def compare(ws: Workspace, runs: list[str]) -> dict:
    """Curves of each run and a key-by-key diff of their plans (config keys and hashes)."""
    from runner.rundir import read_stored_plan
    from runner.rundir.judge import flatten

    if len(runs) < 2:
        raise UserError("runs: pick two or more runs to compare")
    dirs = [run_directory(ws, r) for r in runs]
    plans = [read_stored_plan(d) or {} for d in dirs]
    flat = [{**flatten(p.get("config") or {}),
             **{f"hashes.{k}": v for k, v in (p.get("hashes") or {}).items() if isinstance(v, str)}} for p in plans]
    keys = sorted(set().union(*flat))
    diff = [{"key": k, "values": [f.get(k, "<unset>") for f in flat]} for k in keys
            if len({repr(f.get(k, "<unset>")) for f in flat}) > 1]
    return {"runs": [ws.rel(d) for d in dirs], "curves": [metrics_rows(d) for d in dirs], "diff": diff}


def start_eval(ws: Workspace, jobs, run: str, tasks: str, limit=None):
    run_dir = run_directory(ws, run)
    if not isinstance(tasks, str) or not TASK_NAME.match(tasks):
        raise UserError("tasks: comma-separated task names", hint="e.g. arc_easy,hellaswag")
    argv = ["eval", ws.rel(run_dir), "--tasks", tasks] + (["--limit", str(float(limit))] if limit else [])
    return jobs.start("eval", argv, run=ws.rel(run_dir))


def start_predict(ws: Workspace, jobs, run: str, data: str | None, limit=None):
    run_dir = run_directory(ws, run)
    argv = ["predict", ws.rel(run_dir)]
    argv += ["--data", ws.rel(ws.path(data, "data"))] if data else []
    argv += ["--limit", str(int(limit))] if limit else []
    return jobs.start("predict", argv, run=ws.rel(run_dir))


def start_export(ws: Workspace, jobs, run: str, kind: str, *, out: str | None = None, quant: str | None = None,
                 repo: str | None = None, dry_run: bool = True):
    """merge, gguf, ollama or push. A real push needs a finished dry run of the same repo first."""
    run_dir = run_directory(ws, run)
    rel = ws.rel(run_dir)
    if kind == "merge":
        argv = ["merge", rel]
    elif kind in ("gguf", "ollama"):
        argv = ["export", rel, "--format", kind]
        if quant:
            if not re.match(r"^[a-z0-9_]+$", str(quant).lower()):
                raise UserError("quant: a GGUF type name such as f16 or q8_0")
            argv += ["--quant", str(quant)]
    elif kind == "push":
        if not isinstance(repo, str) or not REPO_ID.match(repo):
            raise UserError("repo: NAME or OWNER/NAME on the Hub")
        argv = ["push", rel, "--repo", repo]
        if dry_run:
            argv.append("--dry-run")
        elif not any(j.command == "push" and j.run == rel and j.exit_code == 0 and "--dry-run" in j.argv
                     and repo in j.argv for j in jobs.jobs.values()):
            raise UserError(f"push {repo}: run the dry run first and read what would be uploaded",
                            hint="press 'Dry run' for this repository")
    else:
        raise UserError(f"kind: {kind!r} is not one of merge, gguf, ollama, push")
    if out and kind != "push":
        target = ws.path(out, "out")
        if UI_DIR in Path(ws.rel(target)).parts:
            raise UserError("out: the UI's own folder is not an output")
        argv += ["--out" if kind == "merge" else "-o", ws.rel(target)]
    return jobs.start(kind if kind != "gguf" and kind != "ollama" else "export", argv, run=rel)
