"""What must never leave the machine in an upload: secrets and local paths. `runner push` runs
these scans over every byte it would upload and refuses, naming file and line (never the value).

Secrets: the values of this environment's secret variables and the Hub token in use, matched
exactly, and token-shaped strings (Hugging Face, OpenAI-style, GitHub, AWS, Slack, private keys, a
long value given to a key such as api_key / token / password).

Paths: this machine's folders that an upload could carry (the run directory, the base model's and
the datasets' folders, the working directory, the home directory), and in files written for
people (cards, configs, JSON, templates) any absolute path under a usual root. A tokenizer's
vocabulary can hold short strings like "/home" as tokens, so files of vocabulary and weights are
checked for this machine's own folders only, never for the generic shapes."""
from __future__ import annotations

import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Files whose bytes are vocabulary or weights: only this machine's own (long) folder names count there.
OPAQUE = re.compile(r"(^|/)(tokenizer\.json|vocab\.json|merges\.txt|tokenizer\.model|spiece\.model|[^/]*\.safetensors|"
                    r"[^/]*\.png)$")
SECRET_PATTERNS = [
    ("a Hugging Face token", re.compile(rb"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}")),
    ("an API key (sk-...)", re.compile(rb"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{20,}")),
    ("a GitHub token", re.compile(rb"(?<![A-Za-z0-9])(gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{20,})")),
    ("an AWS access key", re.compile(rb"(?<![A-Z0-9])AKIA[0-9A-Z]{16}(?![A-Z0-9])")),
    ("a Slack token", re.compile(rb"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,}")),
    ("a private key", re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a credential value", re.compile(
        rb"(?i)(?<![A-Za-z0-9_])(api[_-]?key|api[_-]?token|access[_-]?token|auth[_-]?token|hf[_-]?token|"
        rb"wandb[_-]?api[_-]?key|secret[_-]?key|client[_-]?secret|secret|password|passwd|token)(?![A-Za-z0-9_])"
        rb"[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9_\-./+]{16,})")),
]
# Environment variables whose values are secrets: matched exactly, wherever they appear.
SECRET_ENV = re.compile(r"(TOKEN|API_KEY|APIKEY|SECRET|PASSWORD|PASSWD)$|^HF_TOKEN|^WANDB_API_KEY")
GENERIC_PATH = re.compile(
    rb"(?<![\w.~:/-])(/(home|Users|root|tmp|var|mnt|media|opt|srv|data|scratch|work|private|nfs|gpfs|lustre)/"
    rb"[^\s\"'<>`|]*|~/[^\s\"'<>`|]+|[A-Za-z]:\\\\?(Users|Documents and Settings)\\)")
SHORTEST_OPAQUE_MATCH = 12  # in vocabulary and weights, shorter folder names are common tokens ("/root")


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}"


def secret_values(extra=()) -> list[str]:
    values = [v for k, v in os.environ.items() if SECRET_ENV.search(k.upper()) and v and len(v) >= 8]
    return sorted({*values, *(v for v in extra if v and len(v) >= 8)})


def local_folders(run_dir, plan=None) -> list[str]:
    """This machine's folders that files from a run could name, longest first."""
    folders = {str(Path(run_dir).absolute()), str(Path(run_dir).resolve()), os.getcwd(), str(Path.home()),
               sys.prefix, tempfile.gettempdir()}
    if plan is not None:
        folders.add(plan.config_dir)
        folders.add(str(plan.data.cache_dir))
        for spec in (plan.model, plan.data.tokenizer):
            if getattr(spec, "source", "local") == "local" and os.path.isabs(spec.path):
                folders.add(spec.path)
        for ds in [*plan.data.datasets, *plan.data.eval_datasets]:
            if ds.source == "local":
                folders.add(str(Path(ds.path).parent))
    return sorted({f.rstrip("/") for f in folders if f and len(f.rstrip("/")) > 1}, key=len, reverse=True)


def _line(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def scannable(path_in_repo: str, data: bytes) -> bytes:
    """What of a file is text: a safetensors file's JSON header (its metadata), anything else whole."""
    if path_in_repo.endswith(".safetensors") and len(data) >= 8:
        size = int.from_bytes(data[:8], "little")
        return data[8:8 + size]
    return data


def scan(path_in_repo: str, data: bytes, *, folders, secrets) -> list[Finding]:
    data = scannable(path_in_repo, data)
    found = []
    for value in secrets:
        at = data.find(value.encode())
        if at >= 0:
            found.append(Finding(path_in_repo, _line(data, at), "the value of a secret of this environment"))
    for what, pattern in SECRET_PATTERNS:
        for m in pattern.finditer(data):
            found.append(Finding(path_in_repo, _line(data, m.start()), f"{what}"))
    opaque = OPAQUE.search(path_in_repo) is not None
    for folder in folders:
        if opaque and len(folder) < SHORTEST_OPAQUE_MATCH:
            continue
        at = data.find(folder.encode() + b"/") if len(folder) < SHORTEST_OPAQUE_MATCH else data.find(folder.encode())
        if at >= 0:
            found.append(Finding(path_in_repo, _line(data, at), f"a local path ({_kind(folder)})"))
    if not opaque:
        for m in GENERIC_PATH.finditer(data):
            found.append(Finding(path_in_repo, _line(data, m.start()), "an absolute local path"))
    return _dedupe(found)


def _kind(folder: str) -> str:
    return "the home directory" if folder == str(Path.home()) else "a folder of this machine"


def _dedupe(found: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in found:
        if (f.file, f.line) not in seen:
            seen.add((f.file, f.line))
            out.append(f)
    return out


def local_path_free(value, folders) -> object:
    """A JSON value with every local path in its strings shown as `<local>/NAME` (for plan.json and
    the JSON configs of an upload)."""
    if isinstance(value, dict):
        return {k: local_path_free(v, folders) for k, v in value.items()}
    if isinstance(value, list):
        return [local_path_free(v, folders) for v in value]
    if isinstance(value, str):
        return _strip_paths(value, folders)
    return value


def _strip_paths(text: str, folders) -> str:
    from runner.train.card import LOCAL

    if os.path.isabs(text) or text.startswith("~"):
        return f"{LOCAL}/{Path(os.path.expanduser(text)).name}"
    for folder in folders:
        if folder in text:
            text = re.sub(re.escape(folder) + r"(/[^\s\"']*)?",
                          lambda m: f"{LOCAL}/{Path(m.group(0)).name}", text)
    return text
