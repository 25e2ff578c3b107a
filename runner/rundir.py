"""The run directory: what a finished run holds, how a new launch treats an existing one (refuse,
resume, overwrite), and checkpoints that only count once complete and whole.

    outputs/<name>/
      .runner-run  .runner-lock                                 (written first: runner's folder; its owner)
      plan.json  config.yaml  README.md  metrics.jsonl  loss.png   (rank 0 writes these)
      adapter_model.safetensors + adapter_config.json | model*.safetensors + config.json
      tokenizer files (with the training chat template)
      checkpoints/checkpoint-<step>/ (+ CHECKPOINT_COMPLETE)   checkpoints/.staging/ (in progress)
      RUN_COMPLETE                                              (written last)

A folder without the `.runner-run` marker is never written into or deleted from: not with
overwrite either. In a marked folder runner removes only the names it writes (OWN_FILES)."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError
from runner.launch_config import ACCELERATE_FILE, DEEPSPEED_FILE
from runner.runlock import LOCK_FILE

CHECKPOINTS = "checkpoints"
STAGING = ".staging"
CHECKPOINT_MARKER = "CHECKPOINT_COMPLETE"
RUN_MARKER = "RUN_COMPLETE"
OWNER_MARKER = ".runner-run"  # this folder is runner's run directory (runner.runowner writes it first)
PREVIOUS = ".runner-previous"  # a replaced run, kept until the new one has trained a step
# Runner's own names that belong to the folder, not to one run: never set aside or cleared.
FOLDER_FILES = (OWNER_MARKER, LOCK_FILE, PREVIOUS, PREVIOUS + ".deleting", ACCELERATE_FILE, DEEPSPEED_FILE)
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


def _file_sizes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != CHECKPOINT_MARKER}


def finish_checkpoint(staged: str, checkpoints: str, step: int, plan_hash: str | None = None) -> Path:
    """Mark a fully written checkpoint complete and move it to its final name (atomic rename). The
    marker records every file's size: a file cut short later (a disk that lost writes, a copy
    stopped half way) is found before the checkpoint is resumed from."""
    staged, final = Path(staged), Path(checkpoints) / f"checkpoint-{step}"
    write_json(staged / CHECKPOINT_MARKER, {"step": step, "time": time.time(), "plan_hash": plan_hash,
                                            "files": _file_sizes(staged)})
    if final.exists():
        shutil.rmtree(final)
    os.replace(staged, final)
    return final


def _format_problem(path: Path) -> str | None:
    """Whether a weights file is whole, from its own structure (reads a header, not the data):
    safetensors states where its last tensor ends; torch.save's zip files end with a directory."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if path.suffix == ".safetensors":
            if len(head) < 8:
                return f"{size} bytes: no safetensors header"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return f"cut short: {size:,} bytes, its header alone is {n + 8:,}"
            try:
                header = json.loads(fh.read(n))
                end = max([t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"] or [0])
            except (ValueError, TypeError, KeyError, IndexError):
                return "unreadable safetensors header"
            if size != 8 + n + end:
                return f"{size:,} bytes where its header describes {8 + n + end:,}"
        elif head[:4] == b"PK\x03\x04":
            import zipfile

            if not zipfile.is_zipfile(fh):
                return f"cut short: {size:,} bytes, its zip directory is missing"
    return None


def checkpoint_problem(path) -> str | None:
    """Why a complete-marked checkpoint cannot be resumed from (a file missing, cut short or of
    another size than when it was written), or None. Sizes and headers only: a digest of every
    file would read gigabytes at each save and each launch for damage that truncation checks and
    the filesystem's own checksums already catch."""
    path = Path(path)
    try:
        marker = json.loads((path / CHECKPOINT_MARKER).read_text() or "{}")
    except (OSError, ValueError):
        return f"its {CHECKPOINT_MARKER} marker is unreadable"
    files = marker.get("files") if isinstance(marker, dict) else None
    for rel, size in (files or {}).items():
        file = path / rel
        if not file.is_file():
            return f"{rel} is missing"
        if file.stat().st_size != size:
            return f"{rel} is {file.stat().st_size:,} bytes, {size:,} when it was written"
    for file in sorted(path.rglob("*")):
        problem = _format_problem(file) if file.is_file() else None
        if problem:
            return f"{file.relative_to(path).as_posix()}: {problem}"
    return None


def newest_usable_checkpoint(run_dir) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint that is whole, and a warning for each newer damaged one."""
    warnings = []
    for path in reversed(complete_checkpoints(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, warnings
        warnings.append(f"warning: {path} is damaged ({problem}): not resumed from")
    return None, warnings


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


def fs_error(err: OSError, run_dir, doing: str) -> UserError:
    why = ("a folder name in it is longer than the filesystem allows" if err.errno == errno.ENAMETOOLONG
           else err.strerror or str(err))
    return UserError(f"cannot {doing} output directory {run_dir}: {why}", where="output.dir",
                     hint="choose another output.dir (a short path in a folder you can write to)")


def is_marked(run_dir) -> bool:
    return (Path(run_dir) / OWNER_MARKER).is_file()


def _legacy_run(run_dir, stored) -> bool:
    """A run written before run directories carried the marker: its plan.json names this folder."""
    out = stored.get("output") if isinstance(stored, dict) else None
    return isinstance(out, dict) and out.get("dir") == str(Path(run_dir).resolve()) and "hashes" in stored


def foreign_entries(run_dir) -> list[str]:
    """Names in a run directory that runner did not write: overwrite leaves them where they are."""
    return sorted(n for n in os.listdir(run_dir) if not OWN_FILES.match(n) and n not in FOLDER_FILES)


def _listing(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def check_target(run_dir) -> list[str]:
    """The names in output.dir, if runner may use it: it does not exist, is empty, or carries the
    marker (or a plan.json written for this very folder by a runner before the marker). Anything
    else is refused, with overwrite too: runner never writes into or deletes from a folder it did
    not make."""
    run_dir = Path(run_dir)
    try:
        if not run_dir.exists():
            return []
        if not run_dir.is_dir():
            raise UserError(f"output.dir {run_dir} is a file, not a folder", where="output.dir",
                            hint="choose another output.dir, or move that file away")
        names = sorted(os.listdir(run_dir))
        if not names or is_marked(run_dir) or _legacy_run(run_dir, read_stored_plan(run_dir)):
            return names
    except OSError as err:
        raise fs_error(err, run_dir, "read") from None
    raise UserError(
        f"output directory {run_dir} is not empty and holds no runner run (no {OWNER_MARKER} marker): it holds "
        f"{_listing(names)}",
        where="output.dir",
        hint="runner writes only into a new or empty folder, or one it made itself, with or without overwrite: "
             "choose another output.dir, or move those files out of it",
    )


def decide(plan, *, overwrite: bool = False, resume_changed: bool = False) -> Launch:
    """How a launch treats plan.output['dir'] (pure decision; `prepare` carries it out).
    `resume_changed`: resume an unfinished run although its plan changed (a deliberate change,
    e.g. more steps); the differences are named in the message."""
    run_dir = Path(plan.output["dir"])
    overwrite = overwrite or bool(plan.output.get("overwrite"))
    resume = plan.output.get("resume", "auto")
    names = check_target(run_dir)
    kept = foreign_entries(run_dir) if names else []
    note = f" (kept there, not runner's: {_listing(kept)})" if kept else ""
    stored = read_stored_plan(run_dir) if names else None
    if stored is None:
        started = [n for n in names if OWN_FILES.match(n)]  # a launch that stopped before writing its plan
        return Launch("fresh", message=f"{run_dir} holds no started run: starting in it{note}" if started or kept
                      else "")
    diffs = plan_differences(stored, plan.to_dict())
    finished = (run_dir / RUN_MARKER).is_file()
    if overwrite:
        return Launch("fresh", message=f"overwriting the earlier run in {run_dir}{note}; it is kept in "
                                       f"{run_dir / PREVIOUS} until the new run has trained its first step")
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
        return Launch("fresh", message=f"output.resume is never: starting over in {run_dir}{note}")
    usable, damaged = newest_usable_checkpoint(run_dir)
    warn = "".join(w + "\n" for w in damaged)
    if usable is None:
        return Launch("fresh", message=f"{warn}{run_dir} has no complete checkpoint: starting over{note}")
    if diffs and resume_changed:
        return Launch("resume", checkpoint=str(usable),
                      message=f"{warn}resuming from {usable.name} with a changed plan: " + "; ".join(diffs[:12]))
    if diffs:
        raise UserError(
            f"cannot resume the run in {run_dir}: the plan changed since it started; it differs in: "
            + "; ".join(diffs[:12]),
            where="output.resume",
            hint="restore those settings to resume, pass --resume-changed to resume with the change on purpose, "
            "or set output.overwrite: true / output.resume: never to start over",
        )
    return Launch("resume", checkpoint=str(usable), message=f"{warn}resuming from {usable.name}")


def prepare(plan, launch: Launch, *, is_main: bool = True) -> Path:
    run_dir = Path(plan.output["dir"])
    if is_main:
        if launch.action == "fresh" and run_dir.exists():
            from runner.runowner import set_aside

            set_aside(run_dir)  # deleted once the new run has trained a step (runner.runowner)
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoints_dir(run_dir).mkdir(exist_ok=True)
        staging = checkpoints_dir(run_dir) / STAGING
        if staging.exists():
            shutil.rmtree(staging)  # an interrupted checkpoint is never resumed from
    return run_dir


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
