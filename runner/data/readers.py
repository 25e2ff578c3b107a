"""Read dataset files (json, jsonl, csv, parquet, txt, a folder of them, or a hub id) into
normalised rows, with the bad-row policy: stop with `file:line: reason` for the first few rows
found and the total count, or skip them and count them by reason. Nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from runner.data import media
from runner.data.formats import Normalizer, RowError
from runner.errors import DataError, UserError

SUFFIX_TYPES = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".txt": "txt"}
SHOWN_BAD_ROWS = 5


@dataclass
class LoadedDataset:
    """The rows of one `datasets[]` entry, each with the place it came from."""

    name: str
    rows: list = field(default_factory=list)
    origins: list = field(default_factory=list)   # "file:line" per row
    rows_read: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count (on_bad_row: skip)


class _BadRows:
    def __init__(self, policy: str, fmt: str):
        self.policy, self.fmt = policy, fmt
        self.found: list[tuple[str, str]] = []
        self.total = 0
        self.by_reason: Counter = Counter()
        self.looks_like: str | None = None  # another format that reads the bad rows

    def add(self, where: str, reason: str, raw=None) -> None:
        self.total += 1
        kind = _reason_kind(reason)
        self.by_reason[kind] += 1
        if len(self.found) < SHOWN_BAD_ROWS:
            self.found.append((where, reason))
        if self.looks_like is None and self.total <= SHOWN_BAD_ROWS:  # a few rows tell
            from runner.data.guess import guess_format

            self.looks_like = guess_format(raw, self.fmt)

    def _looks(self) -> str:
        return (f"; these rows look like {self.looks_like}: set format: {self.looks_like}"
                if self.looks_like else "")

    def raise_if_any(self, name: str, kept: int) -> None:
        if not self.total:
            return
        if self.policy == "skip" and (kept or not self.looks_like):
            return
        lines = [f"{w}: {r}" for w, r in self.found]
        more = f"\n  ... and {self.total - len(self.found)} more" if self.total > len(self.found) else ""
        head = (f"{self.total} malformed row(s) in dataset {name}" if self.policy != "skip"
                else f"all {self.total} rows of dataset {name} are skipped")
        hint = ("fix the rows, or set on_bad_row: skip on this dataset to skip and count them" if not self.looks_like
                else f"set format: {self.looks_like} on this dataset (format {self.fmt} cannot read its rows)")
        raise DataError(f"{head} (format {self.fmt}){self._looks()}:\n  " + "\n  ".join(lines) + more,
                        where=self.found[0][0], hint=hint)


def _reason_kind(reason: str) -> str:
    """A short, stable key for counting skipped rows by kind."""
    kinds = (("nested more than", "nested too deeply"), ("tool call", "bad tool call"), ("invalid JSON", "invalid JSON"), ("not valid JSON", "invalid JSON"),
             ("not UTF-8", "not UTF-8"), ("missing field", "missing field"), ("unknown role", "unknown role"),
             ("empty assistant", "empty assistant turn"), ("no assistant", "no assistant turn"),
             ("system message may only", "misplaced system message"), ("columns, found", "wrong column count"),
             ("expected a JSON array", "not a JSON array"), ("must be", "wrong type"), ("is empty", "empty field"))
    for needle, kind in kinds:
        if needle in reason:
            return kind
    return "other"


def load_rows(ds: dict, base_dir: str | None = None, need_answer: bool = True) -> LoadedDataset:
    """Read and normalise one dataset entry of the plan (`path`, `format`, `columns`, ...);
    `need_answer=False` reads prompts whose answer may be missing (runner.data.formats.Normalizer)."""
    normalise = Normalizer(ds.get("format", "alpaca"), ds.get("columns"), ds.get("roles"),
                           ds.get("substitute"), ds.get("system"), need_answer=need_answer)
    out = LoadedDataset(name=ds["path"])
    bad = _BadRows(ds.get("on_bad_row", "error"), ds.get("format", "alpaca"))
    for where, raw in capped(iter_raw_rows(ds, base_dir), ds.get("max_samples")):
        out.rows_read += 1
        if isinstance(raw, RowError):
            bad.add(where, str(raw))
            continue
        try:
            raw = media.prepare_raw(raw, ds.get("columns"))
            row = media.attach(raw, normalise(raw), where.rpartition(":")[0], ds.get("columns"))
        except RowError as e:
            bad.add(where, str(e), raw)
            continue
        out.rows.append(row)
        out.origins.append(where)
    bad.raise_if_any(ds["path"], len(out.rows))
    if out.rows_read == 0:
        raise DataError(f"dataset {ds['path']} holds no rows (an empty file or an empty list)",
                        where=f"{ds['path']}:1", hint="check the file, or remove the dataset from the config")
    out.skipped = bad.by_reason
    return out


def capped(rows, max_samples: int | None):
    """The first max_samples rows (bad rows count: the cap is a place in the file); the rest is
    never read."""
    if max_samples is None:
        yield from rows
        return
    for n, row in enumerate(rows, 1):
        yield row
        if n >= max_samples:
            return


def iter_raw_rows(ds: dict, base_dir: str | None = None):
    """Yield (where, raw row or RowError) for every row of a dataset entry, in file order."""
    path = Path(ds["path"])
    if base_dir and not path.is_absolute():
        path = Path(base_dir) / path
    kind = ds.get("type", "auto")
    if ds.get("subset") and kind != "hub" and path.is_dir():  # a dataset repository's configuration
        from runner.data.hubdata import repository_rows

        yield from repository_rows(path, ds, f"{path}")
        return
    if kind == "hub" or (kind == "auto" and not path.exists()):
        if kind == "auto" and (path.suffix.lower() in SUFFIX_TYPES or ds["path"].startswith((".", "/"))
                               or ds["path"].count("/") > 1):
            raise UserError(f"dataset file {path} does not exist", where=f"datasets: {ds['path']}")
        yield from _hub_rows(ds)
        return
    files = [path] if path.is_file() else _folder_files(path)
    if not files:
        raise UserError(f"folder {path} holds no json/jsonl/csv/parquet/txt files", where=f"datasets: {ds['path']}")
    for file in files:
        file_kind = kind if kind != "auto" else SUFFIX_TYPES.get(file.suffix.lower())
        if file_kind is None:
            raise UserError(f"cannot tell the type of {file} from its extension",
                            hint="set type: json | jsonl | csv | parquet | txt on the dataset")
        yield from READERS[file_kind](file, ds)


def _folder_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIX_TYPES)


def _read_text(path: Path) -> str | UnicodeDecodeError:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return e


def _line_of(text_bytes: bytes, offset: int) -> int:
    return text_bytes.count(b"\n", 0, offset) + 1


def read_json(path: Path, ds: dict):
    text = _read_text(path)
    if isinstance(text, UnicodeDecodeError):
        line = _line_of(path.read_bytes(), text.start)
        yield f"{path}:{line}", RowError(f"not UTF-8 (byte {text.start}); the whole file is unreadable")
        return
    stripped = text.lstrip()
    if not stripped.startswith("["):
        if stripped.startswith("{"):  # JSON lines saved as .json are common
            first_line = stripped.split("\n", 1)[0]
            if first_line.rstrip().endswith("}") and "\n{" in stripped:
                yield from read_jsonl(path, ds)
                return
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:  # RecursionError: nested too deeply
            yield f"{path}:{getattr(e, 'lineno', 1)}", RowError(f"invalid JSON: {e}")
            return
        rows = data.get(ds.get("split", "train"), data.get("data")) if isinstance(data, dict) else None
        if not isinstance(rows, list):
            yield f"{path}:1", RowError("expected a JSON array of rows (or an object with a 'train'/'data' list)")
            return
        for i, row in enumerate(rows):
            yield f"{path}:row {i + 1}", row
        return
    try:
        rows = json.loads(text)
    except (ValueError, RecursionError) as e:
        yield f"{path}:{getattr(e, 'lineno', 1)}", RowError(f"invalid JSON: {e}")
        return
    lines = _array_item_lines(text)
    for i, row in enumerate(rows):
        yield f"{path}:{lines[i] if i < len(lines) else '?'}", row


def _array_item_lines(text: str) -> list[int]:
    """The line each top-level array element starts on; only the error path reads it, but it is cheap."""
    decoder = json.JSONDecoder()
    lines, pos, line = [], text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))
    n = len(text)
    last = 0
    while pos < n:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n or text[pos] == "]":
            break
        line += text.count("\n", last, pos)
        last = pos
        lines.append(line)
        _, pos = decoder.raw_decode(text, pos)
    return lines


# One JSON line longer than this is refused rather than loaded (a corrupt or hostile file could
# otherwise hold one line of gigabytes); real rows are far shorter even at 128k-token contexts.
MAX_LINE_BYTES = 64 * 2**20


def _lines(f):
    """The file's lines; a line over MAX_LINE_BYTES comes back as None after being read past in
    chunks, so memory stays bounded whatever the file holds."""
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while True:
                chunk = f.readline(MAX_LINE_BYTES)
                if not chunk or chunk.endswith(b"\n"):
                    break
            yield None
            continue
        yield raw


def read_jsonl(path: Path, ds: dict):
    with open(path, "rb") as f:
        for number, raw in enumerate(_lines(f), 1):
            where = f"{path}:{number}"
            if raw is None:
                yield where, RowError(f"line longer than {MAX_LINE_BYTES // 2**20} MiB; not read")
                continue
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield where, RowError(f"not UTF-8 (byte {e.start} of the line)")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except (ValueError, RecursionError) as e:
                yield where, RowError(f"invalid JSON line: {e}")


def _utf8_error(path: Path) -> tuple[int, int] | None:
    """(byte offset, line) of the first byte that is not UTF-8, read in chunks; None when all is."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            pending = len(decoder.getstate()[0])  # bytes of a character cut at the chunk's end
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                at = max(0, e.start - pending)
                return offset + at, line + chunk.count(b"\n", 0, at)
            if not chunk:
                return None
            offset += len(chunk)
            line += chunk.count(b"\n")


def read_csv(path: Path, ds: dict):
    """Rows of a CSV file, read as a stream with the csv module's own line handling: a quoted cell
    may hold newlines, form feeds or U+2028, and `file:line` is the line its row starts on."""
    import csv

    bad = _utf8_error(path)
    if bad is not None:
        yield f"{path}:{bad[1]}", RowError(f"not UTF-8 (byte {bad[0]}); the whole file is unreadable")
        return
    # The default 128 KiB cell limit refuses real long answers; a cell is bounded like a JSON line.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        start = 1
        try:
            header = next(reader, None)
            if header is None:
                return
            start = reader.line_num + 1
            for cells in reader:
                where = f"{path}:{start}"
                start = reader.line_num + 1
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    yield where, RowError(f"expected {len(header)} columns, found {len(cells)}")
                    continue
                # An empty CSV cell is an absent value, not an empty string.
                yield where, {k: (v if v != "" else None) for k, v in zip(header, cells)}
        except csv.Error as e:  # a cell over the limit, or an unreadable quote: the rest cannot be told apart
            raise DataError(f"CSV file {path} cannot be read from line {start} on: {e}", where=f"{path}:{start}",
                            hint="fix the file there (a cell over "
                                 f"{MAX_LINE_BYTES // 2**20} MiB, or a quote that is never closed)") from None


def read_parquet(path: Path, ds: dict):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for broken files
        yield f"{path}:row 1", RowError(f"unreadable parquet file: {e}")
        return
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}:row {i + 1}", row


def read_txt(path: Path, ds: dict):
    text_column = ds.get("columns", {}).get("text", "text")
    with open(path, "rb") as f:
        for number, raw in enumerate(_lines(f), 1):
            where = f"{path}:{number}"
            if raw is None:
                yield where, RowError(f"line longer than {MAX_LINE_BYTES // 2**20} MiB; not read")
                continue
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield where, RowError(f"not UTF-8 (byte {e.start} of the line)")
                continue
            if line.strip():
                yield where, {text_column: line}


READERS = {"json": read_json, "jsonl": read_jsonl, "csv": read_csv, "parquet": read_parquet, "txt": read_txt}


def hub_offline_reason() -> str | None:
    """Why a hub dataset cannot be fetched now, or None when the hub looks reachable."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=3).close()
    except OSError as e:
        return f"{endpoint.hostname} cannot be reached ({e.__class__.__name__})"
    return None


def _hub_rows(ds: dict):
    from runner.data.hubdata import hub_rows

    yield from hub_rows(ds)
