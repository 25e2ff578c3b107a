"""Content hashes that make runs reproducible and comparable (docs/architecture.md, "Hashes").

Files are hashed by their bytes, never by path or mtime. Digests of large files are cached by
(path, size, mtime_ns) in the data cache directory so that re-planning a 10 GB dataset stays fast;
the cache only skips re-reading, it never changes a digest.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

# Bump when the data pipeline's output changes for the same inputs: it names the tokenized cache.
DATA_PIPELINE_VERSION = "1"

LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "runner")

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
    "chat_template.jinja", "chat_template.json",
    # a vision-language model's processor: how images become tokens
    "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
)
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
MODEL_CONFIG_FILES = ("config.json", "generation_config.json")
# What a transformers Trainer checkpoint holds beside the weights: the optimizer's and the
# loop's state, which a run started from the checkpoint's weights does not read.
TRAINER_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin")


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def digest_text(value) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def short(digest: str | None) -> str | None:
    return digest[:16] if digest else None


class DigestCache:
    """sha256 of files, remembered by (path, size, mtime_ns) in one small JSON file."""

    def __init__(self, cache_file: Path | None):
        self.file = cache_file
        self.entries: dict = {}
        self.dirty = False
        if cache_file and cache_file.exists():
            try:
                self.entries = json.loads(cache_file.read_text())
            except (OSError, ValueError):
                self.entries = {}

    def file_digest(self, path: Path) -> str:
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key in self.entries:
            return self.entries[key]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        # Small files are cheaper to re-read than to remember.
        if st.st_size >= (1 << 20):
            self.entries[key] = digest
            self.dirty = True
        return digest

    def save(self) -> None:
        if not (self.file and self.dirty):
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(self.entries))
            os.replace(tmp, self.file)
        except OSError:
            pass  # a cache we cannot write only costs time
        self.dirty = False


def tree_digest(paths: list[Path], cache: DigestCache, root: Path | None = None) -> str:
    """Digest of several files: their names relative to `root` (not absolute paths) and bytes."""
    items = []
    for p in sorted(paths):
        name = p.relative_to(root).as_posix() if root and p.is_relative_to(root) else p.name
        items.append([name, cache.file_digest(p)])
    return digest_text(items)


def data_files(path: Path) -> list[Path]:
    """The files a dataset path stands for: itself, or the data files of a folder (recursively)."""
    if path.is_file():
        return [path]
    suffixes = {".json", ".jsonl", ".csv", ".parquet", ".txt", ".arrow"}
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def media_files(path: Path) -> list[Path]:
    """The local images and videos the rows of a dataset path name (runner.data.media)."""
    from runner.data.media import referenced_files

    return [m for f in data_files(path) for m in referenced_files(f)]


def tokenizer_files(directory: Path, gguf_file: str | None) -> list[Path]:
    if gguf_file:
        return [directory / gguf_file]  # a GGUF file carries its own tokenizer
    return [directory / n for n in TOKENIZER_FILES if (directory / n).is_file()]


def model_files(directory: Path, gguf_file: str | None) -> list[Path]:
    if gguf_file:
        return [directory / gguf_file]
    files = [directory / n for n in MODEL_CONFIG_FILES if (directory / n).is_file()]
    files += sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES
                    and p.name not in TRAINER_STATE_FILES and not p.name.startswith("rng_state"))
    return files


@functools.lru_cache(maxsize=None)
def _library_versions() -> tuple:
    out = []
    for name in LIBRARIES:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, None))
    return tuple(out)


def library_versions() -> dict:
    """Installed versions, read from package metadata (once per process): nothing is imported."""
    return dict(_library_versions())
