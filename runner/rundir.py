"""The run directory: what a finished run holds, how a new launch treats an existing one (refuse,
resume, overwrite), and checkpoints that only count once complete.

    outputs/<name>/
      plan.json  config.yaml  README.md  metrics.jsonl  loss.png   (rank 0 writes these)
      adapter_model.safetensors + adapter_config.json | model*.safetensors + config.json
      tokenizer files (with the training chat template)
      checkpoints/checkpoint-<step>/ (complete once CHECKPOINT_COMPLETE is in it)
      RUN_COMPLETE                                              (written last)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError

CHECKPOINTS = "checkpoints"
CHECKPOINT_MARKER = "CHECKPOINT_COMPLETE"
RUN_MARKER = "RUN_COMPLETE"
# Sections of the stored config that may change between launches without changing the run.
NOT_COMPARED = ("output", "tracking", "name")
# Files this project writes at the top of a run dir; overwrite removes only these (and checkpoints).
OWN_FILES = re.compile(
    r"^(plan\.json|config\.yaml|README\.md|metrics\.jsonl|loss\.png|RUN_COMPLETE|training_args\.bin|"
    r"adapter_model\.safetensors|adapter_config\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|"
    r"config\.json|generation_config\.json|tokenizer.*|special_tokens_map\.json|chat_template\.(jinja|json)|"
    r"vocab\.json|merges\.txt|added_tokens\.json|pissa_init|checkpoints|merged|wandb)$"
)


@dataclass
class Launch:
    """What to do in the run dir: 'fresh', 'resume' (from `checkpoint`), or 'done' (nothing to train)."""

    action: str
    checkpoint: str | None = None
    message: str = ""


def checkpoints_dir(run_dir) -> Path:
    return Path(run_dir) / CHECKPOINTS


def complete_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoints, oldest first. A directory without the marker was interrupted."""
    root = checkpoints_dir(run_dir)
    found = []
    for path in root.glob("checkpoint-*") if root.is_dir() else []:
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / CHECKPOINT_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def finish_checkpoint(checkpoints: str, step: int, plan_hash: str | None = None) -> Path:
    """Mark a checkpoint that every rank has finished writing complete: resumable from now on."""
    final = Path(checkpoints) / f"checkpoint-{step}"
    write_json(final / CHECKPOINT_MARKER, {"step": step, "time": time.time(), "plan_hash": plan_hash})
    return final


def rotate_checkpoints(checkpoints: str, keep: int | None) -> None:
    """Keep the newest `keep` complete checkpoints; drop any checkpoint without its marker (a
    leftover of an interrupted copy: never resumed from, only in the way)."""
    complete = complete_checkpoints(Path(checkpoints).parent)
    for path in Path(checkpoints).glob("checkpoint-*"):
        if path.is_dir() and path not in complete:
            shutil.rmtree(path, ignore_errors=True)
    if keep:
        for old in complete[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def flatten(d, prefix="") -> dict:
    out = {}
    if isinstance(d, dict):
        for key, value in d.items():
            out.update(flatten(value, f"{prefix}{key}."))
        if not d and prefix:
            out[prefix[:-1]] = {}
    elif isinstance(d, list) and any(isinstance(v, dict) for v in d):
        for i, value in enumerate(d):
            out.update(flatten(value, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def plan_differences(stored: dict, new: dict) -> list[str]:
    """Human-readable differences that make a stored run a different run: config keys, and the
    content hashes of data and model (same keys, other bytes)."""
    old_cfg = {k: v for k, v in (stored.get("config") or {}).items() if k not in NOT_COMPARED}
    new_cfg = {k: v for k, v in (new.get("config") or {}).items() if k not in NOT_COMPARED}
    a, b = flatten(old_cfg), flatten(new_cfg)
    diffs = [f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}" for key in sorted(set(a) | set(b))
             if a.get(key) != b.get(key)]
    for name, what in (("data", "dataset / template / tokenizer bytes"), ("model", "model files")):
        old_h, new_h = (stored.get("hashes") or {}).get(name), (new.get("hashes") or {}).get(name)
        if old_h and new_h and old_h != new_h:
            diffs.append(f"hashes.{name} ({what} changed): {old_h[:12]} -> {new_h[:12]}")
    return diffs


def read_stored_plan(run_dir) -> dict | None:
    path = Path(run_dir) / "plan.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def clear(run_dir) -> None:
    """Remove what an earlier run wrote (never foreign files); plan.json goes last, so the
    directory reads as a runner run until it is empty of ours."""
    paths = sorted((p for p in Path(run_dir).iterdir() if OWN_FILES.match(p.name)), key=lambda p: p.name == "plan.json")
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def decide(plan, *, overwrite: bool = False, resume_changed: bool = False) -> Launch:
    """How a launch treats plan.output.dir (pure decision; `prepare` carries it out).
    `resume_changed`: resume an unfinished run although its plan changed (a deliberate change,
    e.g. more steps); the differences are named in the message."""
    run_dir = Path(plan.output.dir)
    overwrite = overwrite or plan.output.overwrite
    resume = plan.output.resume
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return Launch("fresh")
    stored = read_stored_plan(run_dir)
    if stored is None:
        if overwrite:
            return Launch("fresh", message=f"{run_dir} holds other files; they are kept")
        raise UserError(
            f"output directory {run_dir} is not empty and holds no runner run (no plan.json)",
            where="output.dir",
            hint="choose another output.dir, or pass --overwrite to write into it anyway",
        )
    diffs = plan_differences(stored, plan.to_dict())
    finished = (run_dir / RUN_MARKER).is_file()
    if overwrite:
        return Launch("fresh", message=f"overwriting the earlier run in {run_dir}")
    if finished:
        if resume == "auto" and not diffs:
            return Launch("done", message=f"{run_dir} already holds this finished run; nothing to train")
        detail = ("; it differs in: " + "; ".join(diffs[:12])) if diffs else ""
        raise UserError(
            f"output directory {run_dir} holds a finished run{detail}",
            where="output.dir",
            hint="set output.overwrite: true (or pass --overwrite) to replace it, or choose another output.dir",
        )
    if resume == "never":
        return Launch("fresh", message=f"output.resume is never: starting over in {run_dir}")
    complete = complete_checkpoints(run_dir)
    if not complete:
        return Launch("fresh", message=f"{run_dir} has no complete checkpoint: starting over")
    if diffs and resume_changed:
        return Launch("resume", checkpoint=str(complete[-1]),
                      message=f"resuming from {complete[-1].name} with a changed plan: " + "; ".join(diffs[:12]))
    if diffs:
        raise UserError(
            f"cannot resume the run in {run_dir}: the plan changed since it started; it differs in: "
            + "; ".join(diffs[:12]),
            where="output.resume",
            hint="restore those settings to resume, pass --resume-changed to resume with the change on purpose, "
            "or set output.overwrite: true / output.resume: never to start over",
        )
    return Launch("resume", checkpoint=str(complete[-1]), message=f"resuming from {complete[-1].name}")


def prepare(plan, launch: Launch, *, is_main: bool = True) -> Path:
    run_dir = Path(plan.output.dir)
    if is_main:
        if launch.action == "fresh" and run_dir.exists():
            clear(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoints_dir(run_dir).mkdir(exist_ok=True)
        rotate_checkpoints(str(checkpoints_dir(run_dir)), None)  # an interrupted checkpoint is never resumed from
    return run_dir


def restart_metrics(run_dir, launch: Launch) -> None:
    """metrics.jsonl as this launch continues it: a resumed run repeats the steps after its
    checkpoint, so their old lines go; a fresh run starts an empty file."""
    path = Path(run_dir) / "metrics.jsonl"
    if launch.action != "resume":
        path.unlink(missing_ok=True)
        return
    if not path.is_file():
        return
    step = int(Path(launch.checkpoint).name.split("-")[-1])
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the torn last line of a killed launch
        # A summary row closes a launch; the resumed launch writes its own.
        if isinstance(row, dict) and row.get("step", 0) <= step and row.get("kind") != "summary":
            keep.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def write_text_atomic(path, text: str) -> None:
    """Readers (and a launch after a kill) see the old file or the new one, never half of one."""
    tmp = Path(f"{path}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_plan(run_dir, plan) -> None:
    write_json(Path(run_dir) / "plan.json", plan.to_dict())


def write_config_yaml(run_dir, plan) -> None:
    import yaml

    text = "# The resolved config of this run (defaults filled, secrets redacted).\n"
    text += yaml.safe_dump(plan.config, sort_keys=False, allow_unicode=True)
    (Path(run_dir) / "config.yaml").write_text(text)


def mark_complete(run_dir, info: dict) -> None:
    write_json(Path(run_dir) / RUN_MARKER, {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **info})


def files_containing(run_dir, needles) -> list[str]:
    """Files under run_dir whose bytes contain any of `needles` (used to prove no secret leaked)."""
    needles = [n.encode() for n in needles if n]
    hits = []
    for path in Path(run_dir).rglob("*"):
        if path.is_file() and needles:
            data = path.read_bytes()
            if any(n in data for n in needles):
                hits.append(str(path))
    return hits
