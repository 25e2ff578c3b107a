"""Secrets (the schema's `x-secret` keys: model.token, the trackers' keys and tokens) never reach a file.

The plan holds them apart (Plan.secrets) and writes `<secret>` in their place; two more ways out are
closed here. A secret given on the command line (`model.token=hf_...`) sits in sys.argv, which the
trackers record (W&B writes the program's arguments into its run file): `redact_argv` rewrites the
process's argument lists before any tracker starts. And after the trackers have closed, every file
under the run directory is searched for the secret values (`leaked_files`); one that holds a value
has it overwritten in place (`scrub`), byte for byte, so the file keeps its length and structure."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REDACTED = "<secret>"
# A shorter value could match weight bytes or ordinary words by chance; real tokens and keys are long.
MIN_SEARCHED = 8
BLOCK = 1 << 20


def _is_secret_key(key: str, secret_keys) -> bool:
    parts = key.strip().split(".")
    for secret in secret_keys:
        want = secret.split(".")
        if len(want) == len(parts) and all(w == p or (w == "*" and p.isdigit()) for w, p in zip(want, parts)):
            return True
    return False


def redact_args(args: list[str], secrets: dict) -> list[str]:
    """`args` with the value of every `KEY=VALUE` override of a secret key, and every secret value
    found elsewhere, replaced by `<secret>`."""
    values = sorted((v for v in secrets.values() if isinstance(v, str) and len(v) >= MIN_SEARCHED), key=len,
                    reverse=True)
    out = []
    for arg in args:
        key, sep, _ = arg.partition("=")
        if sep and _is_secret_key(key, secrets):
            arg = f"{key}={REDACTED}"
        for value in values:
            arg = arg.replace(value, REDACTED)
        out.append(arg)
    return out


def redact_argv(secrets: dict) -> None:
    """sys.argv and sys.orig_argv (what trackers read as the command line) without secret values.
    The operating system's copy (/proc/PID/cmdline, `ps`) cannot be changed from Python: a secret is
    better given as `${env:NAME}` in the config."""
    if not secrets:
        return
    sys.argv[:] = redact_args(sys.argv, secrets)
    if hasattr(sys, "orig_argv"):
        sys.orig_argv = redact_args(list(sys.orig_argv), secrets)


def _searched(secrets: dict) -> list[bytes]:
    return [v.encode() for v in secrets.values() if isinstance(v, str) and len(v) >= MIN_SEARCHED]


def _holds(path: Path, needles: list[bytes]) -> bool:
    """Read in blocks, overlapping by the longest needle, so that a multi-GB weight file is never
    read whole into memory."""
    overlap = max(len(n) for n in needles) - 1
    tail = b""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            window = tail + block
            if any(n in window for n in needles):
                return True
            tail = window[-overlap:] if overlap else b""
    return False


def leaked_files(run_dir, secrets: dict) -> list[Path]:
    """Files under run_dir (the trackers' folders included; links not followed) that hold a secret value."""
    needles = _searched(secrets)
    if not needles:
        return []
    hits = []
    for root, _dirs, files in os.walk(run_dir):
        for name in files:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink() and _holds(path, needles):
                hits.append(path)
    return sorted(hits)


def scrub(paths, secrets: dict) -> None:
    """Overwrite each secret value in these files with as many '*' (lengths and offsets unchanged,
    so a tracker's binary run file stays readable), through a temporary file renamed over it."""
    needles = _searched(secrets)
    for path in paths:
        data = Path(path).read_bytes()
        for needle in needles:
            data = data.replace(needle, b"*" * len(needle))
        tmp = Path(f"{path}.scrub.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
