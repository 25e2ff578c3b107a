"""The tasks an evaluation names, loaded (their data too) before any model: lm-eval task, group and
tag names (mmlu, ceval-valid, arc_easy), the user's task YAML files, and folders of them.

lm-eval resolves a task file's relative `data_files` against the current directory; a task file is
loaded here from its own folder instead, so `data_files: {test: questions.jsonl}` means the file
beside the YAML wherever runner runs, and the user's file is never edited. Each failure a person
can fix (an unknown name, a missing data file, a hub dataset not in the local cache, a dataset
that needs a loading script) is a UserError naming the task and what to do."""
from __future__ import annotations

import contextlib
import difflib
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from runner.config.load import looks_like_task_path
from runner.errors import UserError

HUB_HINT = ("download it where there is network (`lm-eval run --tasks {name} --limit 1 ...` or "
            "datasets.load_dataset fills ~/.cache/huggingface/datasets; copy that folder here), or point the task "
            "at local files: copy {yaml} and set `dataset_path: json` (or parquet) with "
            "`dataset_kwargs: {{data_files: {{test: questions.jsonl}}}}`, then pass that file to --tasks "
            "(docs/evaluate.md, 'Offline')")
GLOB_CHARS = "*?["


@dataclass
class LoadedTasks:
    """What simple_evaluate takes: the Task and Group objects, and the manager that indexed them."""
    manager: object
    objects: list = field(default_factory=list)
    names: list = field(default_factory=list)        # as the user wrote them

    def shown(self) -> str:
        """The loaded tasks' and groups' own names (identity_mc, mmlu)."""
        return ", ".join(getattr(o, "task_name", None) or getattr(o, "name", "?") for o in self.objects)


def split_tasks(value) -> list[str]:
    """`--tasks a,b,c` or a config's list, as a list of entries."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    return [item.strip() for item in items if item and item.strip()]


def load_tasks(entries: list[str], base: Path | None = None, where: str = "--tasks", quiet: bool = True) -> LoadedTasks:
    """Every entry loaded (its dataset read) now, so a bad one fails before a model loads. Relative
    task paths are taken against `base` (the current directory by default)."""
    from runner.evaluate.harness import library_output

    with library_output(quiet):
        return _load_tasks(entries, base, where)


def _load_tasks(entries: list[str], base: Path | None, where: str) -> LoadedTasks:
    if not entries:
        raise UserError("no tasks to evaluate", hint="pass --tasks mmlu,my_task.yaml or set evaluation.tasks in the config")
    base = Path(base or Path.cwd())
    paths = {e: (base / os.path.expanduser(e)).resolve() for e in entries if looks_like_task_path(e)}
    for entry, path in paths.items():
        if not path.exists():
            raise UserError(f"no task file or folder {path}", where=where,
                            hint="name an lm-eval task (mmlu, arc_easy, ...), a task YAML file or a folder of them")
    files = []
    for entry, path in paths.items():
        files += [(entry, f) for f in (task_files(path) if path.is_dir() else [path])]
    for _, file in files:
        check_data_files(file)
    folders = [p for p in paths.values() if p.is_dir()]
    manager = _manager(needs_defaults=len(paths) < len(entries), folders=folders)
    loaded = LoadedTasks(manager)
    for entry in entries:
        if entry in paths:
            continue
        if entry not in manager.all_tasks:
            raise unknown_task(entry, manager.all_tasks, where)
        # A task of a folder given here, named: read from its own folder like the folder's files.
        yaml_path = manager.task_index[entry].yaml_path
        folder = Path(yaml_path).parent if yaml_path and any(Path(yaml_path).is_relative_to(f) for f in folders) else Path.cwd()
        if folder != Path.cwd():
            check_data_files(Path(yaml_path))
        loaded.objects += _load(manager, entry, entry, folder)
        loaded.names.append(entry)
    for entry, file in files:
        loaded.objects += _load(manager, str(file), f"{entry} ({file.name})" if file != paths[entry] else entry, file.parent)
        loaded.names.append(str(file))
    return loaded


def task_files(folder: Path) -> list[Path]:
    """The task YAML files of a folder (recursively): those that define a task. Groups and the
    shared bases that tasks `include` are not tasks of their own."""
    from lm_eval.tasks._yaml_loader import load_yaml

    found = []
    for path in sorted(folder.rglob("*.y*ml")):
        if path.suffix not in (".yaml", ".yml") or "__pycache__" in path.parts:
            continue
        cfg = _read_yaml(path, load_yaml)
        if isinstance(cfg.get("task"), str) and "group" not in cfg:
            found.append(path)
    if not found:
        raise UserError(f"no task YAML in {folder} (a task file has a `task: NAME` key)", where=str(folder),
                        hint="lm-eval's task format: docs/evaluate.md, 'Your own tasks'")
    return found


def check_data_files(path: Path) -> None:
    """Every local `data_files` entry of a task file (after its `include`s) exists beside it."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = _read_yaml(path, load_yaml)
    data_files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    names = []
    for value in (data_files.values() if isinstance(data_files, dict) else [data_files]):
        names += value if isinstance(value, list) else [value]
    for name in (n for n in names if isinstance(n, str)):
        if "://" in name:
            continue  # a URL: the datasets library's to fetch
        target = path.parent / os.path.expanduser(name)
        found = glob.glob(str(target)) if any(c in name for c in GLOB_CHARS) else target.exists()
        if not found:
            raise UserError(f"task {cfg.get('task') or path.stem}: data file {name} not found (looked for {target})",
                            where=_line_of(path, name),
                            hint="data_files are relative to the task file's folder; fix the path or put the file there")


def unknown_task(name: str, known: list[str], where: str) -> UserError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = (f"did you mean {', '.join(close)}? " if close else "") + \
        "`lm-eval ls tasks` lists every task; a task file's path must end in .yaml or contain a /"
    return UserError(f"unknown task {name!r}: lm-evaluation-harness has no task, group or tag of that name",
                     where=where, hint=hint)


def _manager(*, needs_defaults: bool, folders: list[Path]):
    """lm-eval's task index: its own tasks only when a name asks for one (indexing them takes
    seconds), and the folders given, whose tasks may then be named too."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(f) for f in folders] or None, include_defaults=needs_defaults)


def _load(manager, spec: str, shown: str, folder: Path) -> list:
    """One entry built (lm-eval reads its dataset here), from `folder` so relative data files are
    taken beside the task file."""
    try:
        with _working_dir(folder):
            loaded = manager.load([spec])
    except UserError:
        raise
    except Exception as err:  # any library's failure to read a dataset: translated, the cause kept for --debug
        raise _load_error(manager, spec, shown, err) from err
    return _top_level(loaded)


def _top_level(loaded: dict) -> list:
    """The objects simple_evaluate takes back: the groups that are no other group's child, and the
    tasks that are in no group (lm-eval rebuilds the hierarchy from them)."""
    groups = loaded.get("groups") or {}
    children = {c for names in (loaded.get("group_map") or {}).values() for c in names}
    tops = [g for name, g in groups.items() if name not in children]
    in_groups = {t.task_name for g in groups.values() for t in g.get_all_tasks()}
    return tops + [t for name, t in loaded["tasks"].items() if name not in in_groups]


def _load_error(manager, spec: str, shown: str, err: Exception) -> UserError:
    text = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
    entry = manager.task_index.get(spec)
    yaml_path = entry.yaml_path if entry is not None and entry.yaml_path else spec
    lowered = str(err).lower()
    if "dataset scripts" in lowered or "loading script" in lowered:
        return UserError(f"task {shown}: its dataset needs a loading script, which the installed `datasets` cannot run ({text})",
                         where=str(yaml_path),
                         hint="convert the data to JSON Lines or Parquet once and write a task file with "
                              "`dataset_path: json` and `dataset_kwargs: {data_files: {test: FILE}}` "
                              "(docs/evaluate.md, 'Offline')")
    offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True", "yes") or os.environ.get("HF_DATASETS_OFFLINE") in ("1", "true", "True")
    if isinstance(err, (ConnectionError, OSError)) or "offline" in lowered or "couldn't reach" in lowered:
        why = "the hub is offline (HF_HUB_OFFLINE)" if offline else "it is not in the local cache and the hub is unreachable"
        return UserError(f"task {shown}: its dataset cannot be loaded: {why} ({text})", where=str(yaml_path),
                         hint=HUB_HINT.format(name=spec if entry is not None else "NAME", yaml=yaml_path))
    return UserError(f"task {shown}: lm-evaluation-harness could not load it ({text})", where=str(yaml_path),
                     hint="check the task file against lm-eval's task format (docs/evaluate.md); --debug shows the traceback")


def _read_yaml(path: Path, load_yaml) -> dict:
    try:
        cfg = load_yaml(path, resolve_func=False, recursive=True)
    except Exception as err:  # YAML syntax, a missing include, an include cycle
        raise UserError(f"cannot read task file {path}: {str(err).strip().splitlines()[0][:300]}", where=str(path),
                        hint="lm-eval's task format: docs/evaluate.md, 'Your own tasks'") from err
    return cfg if isinstance(cfg, dict) else {}


def _line_of(path: Path, needle: str) -> str:
    """`file:line` of the first line that names `needle` (the task file itself; else the file)."""
    try:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if needle in line:
                return f"{path}:{number}"
    except OSError:
        pass
    return str(path)


@contextlib.contextmanager
def _working_dir(folder: Path):
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)
