"""Other tools' configs and key names. An Axolotl or LLaMA-Factory file given to `runner lint` or
`runner train` is recognised as a whole (one error that says how to import it, instead of an error
per key), and a key another tool spells differently, or that sits in another section of runner's
schema, gets a did-you-mean that names where it lives (`num_epochs` -> `training.epochs`).
Pure: reads the schema and the importers' key tables, imports no ML library."""

from __future__ import annotations

import functools
import os
import re

from runner.config import schema
from runner.errors import UserError

TOOL_NAMES = {"axolotl": "an Axolotl", "llamafactory": "a LLaMA-Factory"}
# Keys only that tool writes at the top level: one of them is enough to recognise its file.
MARKERS = {
    "axolotl": ("base_model", "base_model_config", "sequence_len", "sample_packing", "val_set_size", "lora_r",
                "lora_target_linear", "num_epochs", "dataset_prepared_path", "load_in_4bit", "load_in_8bit",
                "rl", "wandb_project", "micro_batch_size"),
    "llamafactory": ("model_name_or_path", "stage", "finetuning_type", "do_train", "cutoff_len", "lora_rank",
                     "lora_target", "dataset_dir", "per_device_train_batch_size", "num_train_epochs", "pref_beta",
                     "template", "dataset", "report_to"),
}
MIN_EVIDENCE = 3  # top-level keys of that tool (markers or not) before a file is called foreign
MAX_SUGGESTIONS = 6  # a knob every preference stage has (beta) is still worth listing


@functools.lru_cache(maxsize=None)
def _tool_keys(tool: str) -> frozenset:
    """Every key the importer knows for `tool` (translated, implied or unsupported), plus its markers."""
    if tool == "axolotl":
        from runner.importers import axolotl_keys as keys
    else:
        from runner.importers import llamafactory as keys
    names = set(MARKERS[tool])
    for table in ("DIRECT", "IMPLIED", "UNSUPPORTED"):
        names.update(getattr(keys, table, {}))
    return frozenset(names)


def detect(data: dict) -> tuple[str, list[str]] | None:
    """(tool, the keys that gave it away) when `data` is another tool's config, else None. A file
    with a runner `model:` section is runner's own (stray keys then get per-key suggestions)."""
    if not isinstance(data, dict) or isinstance(data.get("model"), dict):
        return None
    runner_top = set(schema.load_schema().get("properties", {}))
    top = [k for k in data if k not in runner_top]
    found = {}
    for tool in MARKERS:
        evidence = [k for k in top if k in _tool_keys(tool)]
        markers = [k for k in evidence if k in MARKERS[tool]]
        if _typed_datasets(data) and tool == "axolotl":
            evidence.append("datasets[].type")
            markers.append("datasets[].type")
        if markers and len(evidence) >= min(MIN_EVIDENCE, len(top)):
            found[tool] = (len(markers), len(evidence), markers + [k for k in evidence if k not in markers])
    if not found:
        return None
    tool = max(found, key=lambda t: found[t][:2])
    return tool, found[tool][2]


def _typed_datasets(data: dict) -> bool:
    """Axolotl's datasets name their row layout in `type` (alpaca, chat_template, ...), which is not
    one of runner's file types."""
    entries = data.get("datasets")
    if not isinstance(entries, list):
        return False
    file_types = set(schema.subschema(("datasets", 0, "type")).get("enum", []))
    return any(isinstance(e, dict) and "format" not in e
               and (isinstance(e.get("type"), dict) or isinstance(e.get("type"), str) and e["type"] not in file_types)
               for e in entries)


def foreign_error(data: dict, config_path, where) -> UserError | None:
    """The one error for another tool's config, naming the import command."""
    found = detect(data)
    if not found:
        return None
    tool, evidence = found
    first = next((k for k in data if k == evidence[0]), None)
    shown = ", ".join(evidence[:6]) + (", ..." if len(evidence) > 6 else "")
    try:
        name = os.path.relpath(config_path)
    except ValueError:
        name = str(config_path)
    name = name if len(name) < len(str(config_path)) else str(config_path)
    return UserError(
        f"this looks like {TOOL_NAMES[tool]} config ({shown}), not a runner config",
        where=where((first,)) if first else where(()),
        hint=f"translate it: runner import {tool} {name} -o cfg.yaml, then lint cfg.yaml "
             "(keys that do not carry over are listed, each with the reason)")


@functools.lru_cache(maxsize=None)
def _index() -> dict:
    """Key name or other tools' alias -> [(section path, key)] over the whole config schema."""
    out: dict = {}

    def visit(node: dict, prefix: tuple) -> None:
        obj = schema._object_branch(node)
        if obj:
            for key, sub in obj.get("properties", {}).items():
                for name in [key] + list(sub.get("x-aliases", [])):
                    out.setdefault(name, [])
                    if (prefix, key) not in out[name]:
                        out[name].append((prefix, key))
                visit(sub, prefix + (key,))
        if "items" in node:
            visit(node["items"], prefix + ("*",))

    visit(schema.load_schema(), ())
    return out


def _display(section: tuple, key: str) -> str:
    text = ".".join(str(p) for p in section + (key,))
    return text.replace(".*", "[]")


def elsewhere(key: str, section: tuple) -> list[str]:
    """Where an unknown key of `section` lives in another section, by its name or an alias:
    ["training.learning_rate"]. List indices in `section` count as '*'."""
    here = tuple("*" if isinstance(p, int) else p for p in section)
    places = [(s, k) for s, k in _index().get(key, []) if s != here]
    if not places or len(places) > MAX_SUGGESTIONS:
        return []
    return [_display(s, k) for s, k in places]


def sibling_hint(path: tuple, value) -> str | None:
    """`type: alpaca` in a dataset: the value fits a sibling key that other tools call `type`
    (runner's `format`); say so instead of only listing the file types."""
    if not path or not isinstance(path[-1], str) or not isinstance(value, str):
        return None
    parent = schema.subschema(path[:-1])
    obj = schema._object_branch(parent) if parent else None
    if not obj:
        return None
    for key, sub in obj.get("properties", {}).items():
        if key != path[-1] and path[-1] in sub.get("x-aliases", []) and value in sub.get("enum", []):
            own = re.split(r"[;.]", obj["properties"][path[-1]].get("description") or "")[0].strip().lower()
            return (f"other tools' {path[-1]!r} is runner's {key!r} here: write `{key}: {value}`"
                    + (f" (runner's `{path[-1]}` is the {own})" if own else ""))
    return None
