"""LLaMA-Factory `dataset: a,b` + `dataset_dir` + dataset_info.json -> runner datasets. The entry layout
(file_name / hf_hub_url, formatting, ranking, columns, tags) follows LLaMA-Factory's data/README.md."""

from __future__ import annotations

import json
from pathlib import Path

from runner.errors import UserError
from runner.importers.common import (Translation, columns_for, dataset_path, is_unset, locate, split_list,
                                     standard_role)

# LLaMA-Factory's defaults for the sharegpt tags; roles are written only where a file differs.
DEFAULT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
TAG_ROLES = {"user_tag": "user", "assistant_tag": "assistant", "observation_tag": "tool",
             "function_tag": "tool_call", "system_tag": "system"}
ENTRY_KEYS = {"file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "formatting", "ranking",
              "subset", "split", "folder", "num_samples", "columns", "tags", "cloud_file_name"}
ENTRY_UNSUPPORTED = {
    "ms_hub_url": "ModelScope datasets are not supported; download the files and use file_name",
    "om_hub_url": "Modelers datasets are not supported; download the files and use file_name",
    "script_url": "dataset loading scripts are not supported",
    "folder": "hub sub-folders are not supported; download the files", "cloud_file_name": "cloud storage is not supported",
}
COLUMN_UNSUPPORTED = {"audios": "runner reads images and videos, not audio"}
MEDIA_COLUMNS = ("images", "videos")  # runner.data.media reads them under these names or `columns:`


def find_dataset_info(explicit, dataset_dir: str, bases: list[Path]) -> Path | None:
    if explicit:
        found = locate(str(explicit), [Path.cwd()])
        if found is None or not found.is_file():
            raise UserError(f"--dataset-info: file not found: {explicit}")
        return found
    return locate(str(Path(dataset_dir) / "dataset_info.json"), bases)


def load_dataset_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the dataset descriptions: {err}", where=str(path)) from None
    if not isinstance(info, dict):
        raise UserError("dataset_info.json must map dataset names to descriptions", where=str(path))
    return info


def translate_names(key: str, names, info: dict | None, info_path: Path | None, dataset_dir: str,
                    stage: str, tr: Translation, bases: list[Path], out_dir: Path,
                    max_samples: int | None) -> list[dict]:
    out = []
    for name in split_list(names):
        where = f"{key}: {name}"
        if dataset_dir == "ONLINE":
            out.append(_runner_dataset({"hf_hub_url": name}, where, stage, tr, bases, out_dir, None))
        elif info is None:
            tr.skip(key, name, "no dataset_info.json found next to the config or in dataset_dir; pass --dataset-info")
        elif name not in info:
            tr.skip(key, name, f"not described in {info_path}")
        else:
            entry = info[name]
            files_dir = [p for p in (locate(dataset_dir, bases), info_path.parent if info_path else None) if p]
            out.append(_runner_dataset(entry, where, stage, tr, files_dir, out_dir, max_samples))
    return [d for d in out if d]


def _location(entry: dict, where: str, tr: Translation, files_dir: list[Path], out_dir: Path) -> dict | None:
    if not is_unset(entry.get("hf_hub_url")):
        return {"path": str(entry["hf_hub_url"]), "type": "hub"}
    if not is_unset(entry.get("file_name")):
        return dataset_path(str(entry["file_name"]), files_dir, out_dir, tr, where)
    for key in ("ms_hub_url", "om_hub_url", "script_url", "cloud_file_name"):
        if not is_unset(entry.get(key)):
            tr.skip(f"{where}.{key}", entry[key], ENTRY_UNSUPPORTED[key])
            return None
    tr.skip(where, entry, "the description names no file_name or hf_hub_url")
    return None


def _runner_dataset(entry: dict, where: str, stage: str, tr: Translation, files_dir: list[Path], out_dir: Path,
                    max_samples: int | None) -> dict | None:
    if not isinstance(entry, dict):
        tr.skip(where, entry, "a dataset description is a mapping")
        return None
    place = _location(entry, where, tr, files_dir, out_dir)
    if place is None:
        return None
    formatting = entry.get("formatting") or "alpaca"
    columns = dict(entry.get("columns") or {})
    tags = {**DEFAULT_TAGS, **(entry.get("tags") or {})}
    for column in list(columns):
        if column in COLUMN_UNSUPPORTED and not is_unset(columns[column]):
            tr.skip(f"{where}.columns.{column}", columns.pop(column), COLUMN_UNSUPPORTED[column])
    ds = dict(place)
    if stage == "pt":
        ds["format"] = "text"
        wanted = {"text": columns.pop("prompt", None) or ("text" if str(ds["path"]).endswith(".txt") else "instruction")}
        if formatting == "sharegpt":
            tr.skip(f"{where}.formatting", formatting, "pre-training reads plain text, not conversations")
    elif entry.get("ranking"):
        ds["format"] = "preference"
        wanted = _alpaca_fields(columns) if formatting == "alpaca" else _chat_fields(columns)
        wanted.pop("output", None)
        wanted.update({"chosen": columns.pop("chosen", None), "rejected": columns.pop("rejected", None)})
    elif columns.get("kto_tag"):
        ds["format"] = "kto"
        if formatting == "alpaca":  # runner's flat kto rows are prompt + completion
            fields = _alpaca_fields(columns)
            wanted = {"prompt": fields["instruction"], "completion": fields["output"], "system": fields["system"]}
            if fields["input"] != "input" or fields["history"]:
                tr.skip(f"{where}.columns", {"query": fields["input"], "history": fields["history"]},
                        "flat kto rows are prompt + completion")
        else:
            wanted = _chat_fields(columns)
        wanted["label"] = columns.pop("kto_tag")
    elif formatting == "alpaca":
        ds["format"] = "alpaca"
        wanted = _alpaca_fields(columns)
    elif formatting in ("sharegpt", "openai"):
        openai = formatting == "openai" or (tags["role_tag"], tags["content_tag"]) == ("role", "content")
        ds["format"] = "messages" if openai else "sharegpt"
        wanted = _chat_fields(columns)
    else:
        tr.skip(f"{where}.formatting", formatting, "runner reads alpaca, sharegpt and openai layouts")
        return None
    if ds["format"] in ("sharegpt", "messages", "preference", "kto") and formatting != "alpaca":
        wanted.update(_tag_columns(tags, ds["format"]))
        roles = _roles(entry.get("tags") or {}, ds["format"])
        if roles:
            ds["roles"] = roles
    media = {m: columns.pop(m) for m in MEDIA_COLUMNS if not is_unset(columns.get(m))}
    for column, value in columns.items():
        if not is_unset(value):
            tr.skip(f"{where}.columns.{column}", value, "runner's formats have no such field")
    found = columns_for(ds["format"], wanted)
    found.update({m: column for m, column in media.items() if column != m})
    if found:
        ds["columns"] = found
    if not is_unset(entry.get("split")) and entry["split"] != "train":
        ds["split"] = str(entry["split"])
    if not is_unset(entry.get("num_samples")):
        ds["num_samples"] = int(entry["num_samples"])
    if not is_unset(max_samples):  # LLaMA-Factory keeps the first max_samples rows: runner's cap
        ds["max_samples"] = int(max_samples)
    if not is_unset(entry.get("subset")):
        ds["subset"] = str(entry["subset"])
    for key in entry:
        if key not in ENTRY_KEYS:
            tr.skip(f"{where}.{key}", entry[key], "not a documented dataset_info key")
        elif key == "folder" and not is_unset(entry[key]):
            tr.skip(f"{where}.{key}", entry[key], ENTRY_UNSUPPORTED[key])
    return ds


def _alpaca_fields(columns: dict) -> dict:
    return {"instruction": columns.pop("prompt", None) or "instruction", "input": columns.pop("query", None) or "input",
            "output": columns.pop("response", None) or "output", "system": columns.pop("system", None),
            "history": columns.pop("history", None)}


def _chat_fields(columns: dict) -> dict:
    return {"messages": columns.pop("messages", None) or "conversations", "system": columns.pop("system", None),
            "tools": columns.pop("tools", None)}


def _tag_columns(tags: dict, fmt: str) -> dict:
    pair = (tags["role_tag"], tags["content_tag"])
    if fmt in ("preference", "kto") and pair in (("from", "value"), ("role", "content")):
        return {}  # both standard message shapes are recognised as they are
    return {"role": pair[0], "content": pair[1]}


def _roles(tags: dict, fmt: str) -> dict:
    """{file role: runner role} for the tags a description sets that differ from the format's names."""
    roles = {}
    for tag, role in TAG_ROLES.items():
        name = tags.get(tag)
        if name and not standard_role(str(name), role):
            roles[str(name)] = role
    return roles
