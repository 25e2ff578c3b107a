"""The run directory's layout and its small writes:

    outputs/<name>/
      .runner-run  .runner-lock                                 (written first: runner's folder; its owner)
      plan.json  config.yaml  README.md  metrics.jsonl  loss.png   (rank 0 writes these)
      adapter_model.safetensors + adapter_config.json | model*.safetensors + config.json
      tokenizer files (with the training chat template)
      checkpoints/checkpoint-<step>/ (complete once CHECKPOINT_COMPLETE is in it)
      predict/ (runner predict: predictions.jsonl, metrics.json)
      RUN_COMPLETE                                              (written last)

A folder without the `.runner-run` marker is never written into or deleted from: not with
overwrite either. In a marked folder runner removes only the names it writes (OWN_FILES)."""
from __future__ import annotations

import errno
import json
import os
import re
import time
from pathlib import Path

from runner.errors import UserError
from runner.plan.launch_settings import ACCELERATE_FILE, DEEPSPEED_FILE
from runner.rundir.lock import LOCK_FILE

CHECKPOINTS = "checkpoints"
CHECKPOINT_MARKER = "CHECKPOINT_COMPLETE"
RUN_MARKER = "RUN_COMPLETE"
OWNER_MARKER = ".runner-run"  # this folder is runner's run directory (runner.rundir.owner writes it first)
PREVIOUS = ".runner-previous"  # a replaced run, kept until the new one has trained a step
# Runner's own names that belong to the folder, not to one run: never set aside or cleared.
FOLDER_FILES = (OWNER_MARKER, LOCK_FILE, PREVIOUS, PREVIOUS + ".deleting", ACCELERATE_FILE, DEEPSPEED_FILE)
# Sections of the stored config that may change between launches without changing the run.
NOT_COMPARED = ("output", "tracking", "name", "evaluation")
# Files this project writes at the top of a run dir; overwrite removes only these (and checkpoints).
OWN_FILES = re.compile(
    r"^(plan\.json|config\.yaml|README\.md|metrics\.jsonl|loss\.png|RUN_COMPLETE|training_args\.bin|"
    r"adapter_model\.safetensors|adapter_config\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|"
    r"config\.json|generation_config\.json|tokenizer.*|special_tokens_map\.json|chat_template\.(jinja|json)|"
    r"vocab\.json|merges\.txt|added_tokens\.json|pissa_init|checkpoints|merged|wandb|tensorboard|mlflow\.db|mlartifacts|swanlog|predict|eval|gguf)$"
)


def read_stored_plan(run_dir) -> dict | None:
    path = Path(run_dir) / "plan.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def fs_error(err: OSError, run_dir, doing: str) -> UserError:
    why = ("a folder name in it is longer than the filesystem allows" if err.errno == errno.ENAMETOOLONG
           else err.strerror or str(err))
    return UserError(f"cannot {doing} output directory {run_dir}: {why}", where="output.dir",
                     hint="choose another output.dir (a short path in a folder you can write to)")


def is_marked(run_dir) -> bool:
    return (Path(run_dir) / OWNER_MARKER).is_file()


def foreign_entries(run_dir) -> list[str]:
    """Names in a run directory that runner did not write: overwrite leaves them where they are."""
    return sorted(n for n in os.listdir(run_dir) if not OWN_FILES.match(n) and n not in FOLDER_FILES)


def restart_metrics(run_dir, resume_from: str | None) -> None:
    """metrics.jsonl as this launch continues it: a resumed run repeats the steps after its
    checkpoint, so their old lines go; a fresh run starts an empty file."""
    path = Path(run_dir) / "metrics.jsonl"
    if resume_from is None:
        path.unlink(missing_ok=True)
        return
    if not path.is_file():
        return
    step = int(Path(resume_from).name.split("-")[-1])
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
