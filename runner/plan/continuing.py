"""Plan-side parts of continuing and of data at scale: where an existing adapter or a checkpointed
model lies, what of them joins the hashes (their bytes, a hub dataset's commit), and which new
settings stay out of the hashes while off, so that runs planned before they existed keep theirs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from runner.errors import UserError
from runner.plan import hashing, hub

# Settings added after runs existed: at these values they are left out of the hashed dicts, which
# then equal what an earlier runner hashed.
NEW_AT_DEFAULT = {"subset": None, "revision": None, "max_samples": None, "streaming": False, "init_from": None,
                  "context_parallel": 1, "sequence_parallel": 1}
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def at_default(section: dict) -> dict:
    out = {k: v for k, v in section.items() if not (k in NEW_AT_DEFAULT and v == NEW_AT_DEFAULT[k])}
    if "streaming" in section and not section["streaming"]:
        out.pop("stream_buffer", None)  # only a stream has a buffer
    return out


def streaming_part(data: dict) -> dict:
    """What streaming adds to the data hash: how rows are grouped for shuffling and packing."""
    return {"streaming": True, "stream_buffer": data["stream_buffer"]} if data["streaming"] else {}


def hub_dataset_commit(ds: dict) -> str | None:
    return hub.cached(ds["path"], ds["revision"])[0]


def adapter_files(folder: Path) -> list[Path]:
    return [folder / n for n in ("adapter_config.json", *ADAPTER_WEIGHTS) if (folder / n).is_file()]


def adapter_part(adapter: dict, init_from: str | None, cache: hashing.DigestCache) -> dict:
    """The adapter section as config_hash sees it: an existing adapter by its files' bytes."""
    part = at_default(adapter)
    if init_from:
        folder = Path(init_from)
        part["init_from"] = hashing.tree_digest(adapter_files(folder), cache, folder)
    return part


def resolve_init_from(path: str, base: Path, where: str) -> str:
    """The absolute folder of an existing PEFT LoRA adapter; UserError when it is not one."""
    folder = Path(os.path.expanduser(path))
    folder = (folder if folder.is_absolute() else base / folder).resolve()
    hint = ("point adapter.init_from at a folder holding adapter_config.json and adapter_model.safetensors "
            "(a runner run directory, one of its checkpoints, or a PEFT adapter)")
    if not folder.is_dir():
        raise UserError(f"adapter.init_from: no folder {folder}", where=where, hint=hint)
    config = folder / "adapter_config.json"
    if not config.is_file():
        full = (folder / "config.json").is_file()
        raise UserError(f"adapter.init_from: {folder} holds no adapter_config.json"
                        + (" (it holds a full model)" if full else ""), where=where,
                        hint="a full model continues as model.path" if full else hint)
    try:
        settings = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"adapter.init_from: {config} is not readable JSON ({e})", where=where) from None
    kind = settings.get("peft_type") if isinstance(settings, dict) else None
    if kind != "LORA":
        raise UserError(f"adapter.init_from: {config} describes a {kind} adapter; runner continues LoRA adapters",
                        where=where, hint=hint)
    if not any((folder / n).is_file() for n in ADAPTER_WEIGHTS):
        raise UserError(f"adapter.init_from: {folder} has adapter_config.json but no adapter weights "
                        f"({' or '.join(ADAPTER_WEIGHTS)})", where=where, hint=hint)
    return str(folder)


def model_folder_errors(folder: Path, where: str) -> list[UserError]:
    """model.path at a folder that holds no model: an adapter (say where it goes instead)."""
    if not folder.is_dir() or (folder / "config.json").is_file():
        return []
    if (folder / "adapter_config.json").is_file():
        merged = folder / "merged"
        return [UserError(f"model.path: {folder} holds a LoRA adapter, not a model", where=where,
                          hint=("continue it with adapter.init_from: this folder and model.path: its base model"
                                + (f", or train on the merged model: model.path: {merged}" if
                                   (merged / "config.json").is_file() else
                                   "; or merge it first (runner merge) and point model.path at the merged folder")))]
    return []
