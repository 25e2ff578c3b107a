"""Images and videos in dataset rows: read, checked and counted before anything is tokenized.

Two layouts are read, both into the one internal form (placeholders in the text, media lists beside
the messages: {"messages": [...], "images": [...], "videos": [...]}):

- LLaMA-Factory's: `images` / `videos` lists next to `messages` (or sharegpt `conversations`), with
  `<image>` / `<video>` placeholders in the turns, one per item, in order;
- OpenAI content parts: a message's content is a list of `{"type": "text"}`, `{"type": "image_url",
  "image_url": {"url": ...}}`, `{"type": "image", "image": ...}` (or `"path"`/`"url"`) and
  `{"type": "video", ...}` parts; each media part becomes a placeholder where it stands.

A local path is relative to the data file's folder; a `data:` URL carries the bytes itself. A missing
or unreadable file, or placeholders that do not match the media list, is a RowError: the reader adds
the dataset file and row. Pure Python (Pillow inside functions), so that hashing can list the files.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from runner.data.rowjson import RowError

IMAGE, VIDEO = "<image>", "<video>"
PLACEHOLDERS = {"images": IMAGE, "videos": VIDEO}
_CONVERSATION_KEYS = ("messages", "conversations")
_CONTENT_KEYS = ("content", "value")
_PART_KINDS = {"image": "images", "image_url": "images", "input_image": "images", "video": "videos",
               "video_url": "videos"}
_HINTS = (b'"images"', b'"videos"', b'"image_url"', b'"image"', b'"video"')


def has_media(row: dict) -> bool:
    return bool(row.get("images") or row.get("videos"))


# ---- reading a raw row ---------------------------------------------------------------------------
def prepare_raw(raw, columns: dict | None = None):
    """A raw row with content-part messages rewritten as placeholder text plus media lists (the
    LLaMA-Factory layout). Rows without content parts are returned unchanged."""
    if not isinstance(raw, dict):
        return raw
    columns = columns or {}
    parts_media = {"images": [], "videos": []}
    changed = False
    out = dict(raw)
    for key in _CONVERSATION_KEYS + ("chosen", "rejected"):
        value = raw.get(key)
        if isinstance(value, list):
            new = [_flatten_message(m, parts_media) if isinstance(m, dict) else m for m in value]
            changed |= new != value
            out[key] = new
        elif isinstance(value, dict):
            new = _flatten_message(value, parts_media)
            changed |= new != value
            out[key] = new
    if not changed:
        return raw
    for kind, found in parts_media.items():
        column = columns.get(kind, kind)
        if found and raw.get(column):
            raise RowError(f"the row has both {kind} in content parts and a {column!r} list; use one of them")
        if found:
            out[column] = found
    return out


def _flatten_message(message: dict, media: dict) -> dict:
    for key in _CONTENT_KEYS:
        content = message.get(key)
        if isinstance(content, list):
            return {**message, key: _flatten_parts(content, media)}
    return message


def _flatten_parts(parts: list, media: dict) -> str:
    text = []
    for i, part in enumerate(parts, 1):
        if isinstance(part, str):
            text.append(part)
            continue
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise RowError(f"content part {i} must be an object with a 'type'")
        kind = part["type"]
        if kind in ("text", "input_text"):
            text.append(str(part.get("text") or ""))
            continue
        if kind not in _PART_KINDS:
            raise RowError(f"content part {i} has type {kind!r}; runner reads text, image, image_url, video parts")
        ref = part.get(kind)
        if isinstance(ref, dict):
            ref = ref.get("url") or ref.get("path")
        ref = ref or part.get("url") or part.get("path")
        if not isinstance(ref, str) or not ref:
            raise RowError(f"content part {i} ({kind}) names no file or URL")
        media[_PART_KINDS[kind]].append(ref)
        text.append(PLACEHOLDERS[_PART_KINDS[kind]])
    return "".join(text)


def attach(raw: dict, row: dict, data_file: str | None, columns: dict | None = None) -> dict:
    """The normalised `row` with its media: paths made absolute (relative to the data file's
    folder), each file checked to exist and decode, placeholders counted against the lists."""
    columns = columns or {}
    for kind in ("images", "videos"):
        value = raw.get(columns.get(kind, kind)) if isinstance(raw, dict) else None
        if value is None or value == []:
            continue
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise RowError(f"{kind!r} must be a list of file paths or data URLs")
        base = Path(data_file).parent if data_file else Path.cwd()
        row[kind] = [resolve(ref, base, kind, i) for i, ref in enumerate(value, 1)]
    if has_media(row):  # a text row may say "<image>" literally; a VLM's pipeline counts those rows too
        check_counts(row)
    return row


def resolve(ref: str, base: Path, kind: str, index: int) -> str:
    if ref.startswith("data:"):
        media_bytes(ref)  # a malformed URL fails here, on its row
        return ref
    if ref.startswith(("http://", "https://")):
        raise RowError(f"{kind[:-1]} {index} is a web address ({ref[:80]}); runner reads local files and "
                       "data: URLs only (download it first)")
    path = Path(ref).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise RowError(f"{kind[:-1]} {index} ({ref}) does not exist (looked for {path})")
    if kind == "images":
        check_image(str(path), index)
    return str(path)


def check_image(ref: str, index: int = 1) -> None:
    try:
        load_image(ref)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... for damaged files
        raise RowError(f"image {index} ({_short(ref)}) cannot be read as an image: {e}") from None


def _short(ref: str) -> str:
    return ref[:40] + "..." if ref.startswith("data:") else ref


def check_counts(row: dict) -> None:
    """Each media item has one placeholder in the conversation, and each placeholder an item."""
    for kind, mark in PLACEHOLDERS.items():
        found = sum(text.count(mark) for text in conversation_texts(row))
        items = len(row.get(kind) or [])
        if found != items:
            raise RowError(f"the row has {found} {mark} placeholder(s) but {items} {kind}; "
                           f"each of its {kind} needs one {mark} where it belongs in the turns")


def conversation_texts(row: dict):
    for m in row.get("messages") or []:
        yield m.get("content") or ""
    for key in ("chosen", "rejected"):
        if isinstance(row.get(key), dict):
            yield row[key].get("content") or ""


# ---- loading -------------------------------------------------------------------------------------
def media_bytes(ref: str) -> bytes:
    if ref.startswith("data:"):
        head, _, payload = ref.partition(",")
        if ";base64" not in head:
            raise RowError("a data: URL must be base64-encoded (data:image/png;base64,...)")
        try:
            return base64.b64decode(payload, validate=True)
        except ValueError as e:
            raise RowError(f"the data: URL is not valid base64: {e}") from None
    return Path(ref).read_bytes()


def load_image(ref: str, max_pixels: int | None = None, min_pixels: int | None = None):
    """An RGB PIL image, scaled down to at most max_pixels (and up to at least min_pixels), the
    aspect ratio kept, as LLaMA-Factory's image_max_pixels / image_min_pixels do."""
    from PIL import Image

    with Image.open(io.BytesIO(media_bytes(ref))) as opened:
        image = opened.convert("RGB")
    area = image.width * image.height
    scale = 1.0
    if max_pixels and area > max_pixels:
        scale = (max_pixels / area) ** 0.5
    elif min_pixels and area < min_pixels:
        scale = (min_pixels / area) ** 0.5
    if scale != 1.0:
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


# ---- hashing: the media files a dataset names ----------------------------------------------------
def referenced_files(data_file: Path) -> list[Path]:
    """The local media files the rows of a .json / .jsonl file name (for data_hash). Files that
    cannot name media (no such key in their bytes) are not parsed."""
    if data_file.suffix.lower() not in (".json", ".jsonl"):
        return []
    try:
        raw = data_file.read_bytes()
    except OSError:
        return []
    if not any(h in raw for h in _HINTS):
        return []
    try:
        rows = ([json.loads(line) for line in raw.splitlines() if line.strip()]
                if data_file.suffix.lower() == ".jsonl" else json.loads(raw))
    except (ValueError, RecursionError):
        return []  # the reader reports the bad file with its line
    if isinstance(rows, dict):
        rows = rows.get("train") or rows.get("data") or []
    found = set()
    for row in rows if isinstance(rows, list) else []:
        try:
            row = prepare_raw(row)
        except RowError:
            continue
        if not isinstance(row, dict):
            continue
        for kind in ("images", "videos"):
            refs = row.get(kind)
            for ref in [refs] if isinstance(refs, str) else refs if isinstance(refs, list) else []:
                if isinstance(ref, str) and not ref.startswith(("data:", "http://", "https://")):
                    path = Path(ref).expanduser()
                    path = path if path.is_absolute() else data_file.parent / path
                    if path.is_file():
                        found.add(path)
    return sorted(found)
