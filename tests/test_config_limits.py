"""Config input limits: no NaN, infinity or absurd magnitude in any number (in the file or on the
command line), and no file read before its type and size are known (a FIFO, /dev/zero, a directory,
a socket or a huge file, at the top or named by `extends:`)."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runner.config import schema
from runner.cli import main
from runner.errors import ConfigErrors
from runner.plan.resolve import make_plan

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CONFIGS = FIXTURES / "configs"
REPO = Path(__file__).resolve().parents[1]
HEAD = f"""\
model: {{path: {CONFIGS / 'tiny-model'}}}
datasets:
  - {{path: {CONFIGS / 'data' / 'alpaca_small.json'}}}
"""


def lint(capsys, path, *overrides) -> tuple[int, str]:
    code = main(["plan", str(path), *overrides]) if overrides else main(["lint", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def write(tmp_path: Path, body: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(HEAD + textwrap.dedent(body))
    return path


# (section yaml, key path, line of the value in the file written by `write`)
NUMBER_KEYS = [
    ("training: {{learning_rate: {v}}}", "training.learning_rate"),
    ("training: {{epochs: {v}}}", "training.epochs"),
    ("val_size: {v}", "val_size"),
    ("adapter: {{dropout: {v}}}", "adapter.dropout"),
    ("adapter: {{alpha: {v}}}", "adapter.alpha"),
    ("training: {{adam_beta2: {v}}}", "training.adam_beta2"),
    ("training: {{max_grad_norm: {v}}}", "training.max_grad_norm"),
    ("training: {{dpo: {{beta: {v}}}}}", "training.dpo.beta"),
    ("training: {{kto: {{desirable_weight: {v}}}}}", "training.kto.desirable_weight"),
]


@pytest.mark.parametrize("literal", [".nan", ".NaN", ".inf", "-.inf", "+.inf", "1e999", "-1e999"])
@pytest.mark.parametrize("section,key", NUMBER_KEYS, ids=[k for _, k in NUMBER_KEYS])
def test_non_finite_numbers_are_refused_with_key_and_position(capsys, tmp_path, section, key, literal):
    path = write(tmp_path, section.format(v=literal) + "\n")
    code, out = lint(capsys, path)
    assert code == 2, out
    assert f"{key}:" in out and "cfg.yaml:4:" in out and "finite" in out, out
    assert "Traceback" not in out


def test_dataset_weight_nan_is_refused(capsys, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"model: {{path: {CONFIGS / 'tiny-model'}}}\n"
                    f"datasets:\n  - {{path: {CONFIGS / 'data' / 'alpaca_small.json'}, weight: .nan}}\n")
    code, out = lint(capsys, path)
    assert code == 2 and "datasets.0.weight:" in out and "cfg.yaml:3:" in out and "finite" in out, out


def test_non_finite_numbers_are_refused_under_any_key(capsys, tmp_path):
    """Whatever the key (a string key, a list, one the schema does not know): never a NaN accepted."""
    path = write(tmp_path, "name: .nan\ntracking: {wandb: {project: p, tags: [.inf]}}\n")
    code, out = lint(capsys, path)
    assert code == 2
    assert "name: nan is not a finite number" in out and "tracking.wandb.tags.0: inf is not a finite number" in out, out


@pytest.mark.parametrize("key", ["training.learning_rate", "training.epochs", "val_size", "adapter.dropout",
                                 "adapter.r", "training.adam_beta1", "training.adam_epsilon", "training.weight_decay",
                                 "training.max_steps", "training.micro_batch_size", "sequence.max_length",
                                 "training.seed", "training.orpo.beta", "tracking.log_every", "output.save_every"])
def test_absurd_magnitudes_are_refused_by_the_schema_range(capsys, tmp_path, key):
    *sections, leaf = key.split(".")
    value = "1e308" if schema.types_at(tuple(key.split("."))) & {"number"} else str(10 ** 30)
    body = "".join("  " * i + f"{s}:\n" for i, s in enumerate(sections)) + "  " * len(sections) + f"{leaf}: {value}\n"
    path = write(tmp_path, body)
    code, out = lint(capsys, path)
    assert code == 2, out
    line = 4 + len(sections)
    assert f"{key}:" in out and f"cfg.yaml:{line}:{2 * len(sections) + 1}" in out, out
    assert "must be <" in out and "takes" in out, out


def test_dropout_of_one_drops_everything_and_is_refused(capsys, tmp_path):
    code, out = lint(capsys, write(tmp_path, "adapter: {dropout: 1}\n"))
    assert code == 2 and "adapter.dropout: 1 must be < 1" in out, out
    plan = make_plan(write(tmp_path, "adapter: {dropout: 0.999}\n", "ok.yaml"))
    assert plan.adapter.dropout == 0.999


def test_seed_beyond_numpy_range_is_refused(capsys, tmp_path):
    code, out = lint(capsys, write(tmp_path, "training: {seed: 4294967296}\n"))
    assert code == 2 and "training.seed" in out, out
    assert make_plan(write(tmp_path, "training: {seed: 4294967295}\n", "ok.yaml")).training.seed == 4294967295


def test_every_number_key_of_the_schema_has_a_finite_range():
    """A key added later without bounds fails here (num_samples: the data checks bound it)."""
    unbounded = []

    def visit(node, path):
        types = node.get("type") if isinstance(node.get("type"), list) else [node.get("type")]
        if {"number", "integer"} & set(types) and "maximum" not in node and "exclusiveMaximum" not in node:
            unbounded.append(path)
        obj = schema._object_branch(node)
        for key, sub in (obj or {}).get("properties", {}).items():
            visit(sub, f"{path}.{key}" if path else key)
        if "items" in node:
            visit(node["items"], f"{path}[]")

    visit(schema.load_schema(), "")
    assert [p for p in unbounded if not p.endswith("num_samples")] == []


@pytest.mark.parametrize("override,key", [
    ("training.learning_rate=nan", "training.learning_rate"), ("training.learning_rate=.nan", "training.learning_rate"),
    ("training.epochs=.inf", "training.epochs"), ("training.epochs=inf", "training.epochs"),
    ("adapter.dropout=1e999", "adapter.dropout"), ("val_size=-.inf", "val_size"),
    ("training.learning_rate=1e308", "training.learning_rate"), ("datasets.0.weight=1e308", "datasets.0.weight"),
])
def test_overrides_with_non_finite_or_absurd_numbers_are_refused(capsys, override, key):
    code, out = lint(capsys, CONFIGS / "minimal.yaml", override)
    assert code == 2, out
    assert f"{key}:" in out and f"<command line> ({override})" in out, out
    assert "finite" in out or "must be" in out, out
    with pytest.raises(ConfigErrors):
        make_plan(CONFIGS / "minimal.yaml", [override])


# --- files that are not regular files, or too big, are refused before anything is read -------------

def _special(tmp_path: Path, kind: str) -> Path:
    if kind == "fifo":
        os.mkfifo(tmp_path / "base.yaml")
        return tmp_path / "base.yaml"
    if kind == "dir":
        (tmp_path / "base.yaml").mkdir()
        return tmp_path / "base.yaml"
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(tmp_path / "base.yaml"))
        return tmp_path / "base.yaml"
    return Path("/dev/zero")


def _run(args, cwd, env=None, timeout=60) -> subprocess.CompletedProcess:
    def limit():  # a config read whole into memory must fail here, not take the machine's memory
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    return subprocess.run([sys.executable, "-m", "runner", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


KIND_WORDS = {"fifo": "named pipe", "dir": "directory", "socket": "socket", "zero": "character device"}


@pytest.mark.parametrize("kind", ["fifo", "dir", "socket", "zero"])
def test_extends_naming_a_special_file_is_refused_at_once(tmp_path, kind):
    base = _special(tmp_path, kind)
    cfg = tmp_path / "top.yaml"
    cfg.write_text(f"extends: {base}\n" + HEAD)
    start = time.monotonic()
    proc = _run(["lint", cfg], tmp_path, env={"RUNNER_EXTENDS_ROOT": "/"}, timeout=30)
    assert time.monotonic() - start < 30
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "top.yaml:1" in out and KIND_WORDS[kind] in out and "not a config file" in out, out
    assert "Traceback" not in out


@pytest.mark.parametrize("kind", ["fifo", "dir", "socket", "zero"])
def test_top_level_config_that_is_a_special_file_is_refused_at_once(tmp_path, kind):
    path = _special(tmp_path, kind)
    proc = _run(["lint", path], tmp_path, timeout=30)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert KIND_WORDS[kind] in out and "not a config file" in out and "Traceback" not in out, out


def test_huge_sparse_config_is_refused_by_its_size_before_reading(tmp_path):
    """8 GiB that take no disk: reading it whole (what the old loader did) cannot fit the 3 GiB the
    process is given; a stat first refuses it in milliseconds."""
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.truncate(8 << 30)
    base = tmp_path / "top.yaml"
    base.write_text("extends: huge.yaml\n" + HEAD)
    for target, where in ((path, "huge.yaml"), (base, "huge.yaml")):
        start = time.monotonic()
        proc = _run(["lint", target], tmp_path)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out[-2000:]
        assert "8,589,934,592 bytes" in out and "limited to 1,048,576" in out and where in out, out
        assert time.monotonic() - start < 20 and "Traceback" not in out


def test_sweep_and_import_refuse_a_fifo_too(tmp_path):
    fifo = _special(tmp_path, "fifo")
    proc = _run(["import", "axolotl", fifo], tmp_path, timeout=30)
    assert proc.returncode == 2 and "named pipe" in proc.stderr, proc.stderr
    from runner.errors import UserError
    from runner.sweep.space import load_sweep

    with pytest.raises(UserError, match="named pipe"):
        load_sweep(fifo)
