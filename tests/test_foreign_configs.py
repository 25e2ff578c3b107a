"""Other tools' configs given to runner: a whole Axolotl or LLaMA-Factory file is one error naming the
import command (the real files of tests/fixtures/axolotl and tests/fixtures/llamafactory); in a runner
config, another tool's key or a key in the wrong section gets a did-you-mean naming where it lives
(from the schema's x-aliases); YAML 1.1 booleans get their own hint."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.cli import main

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
CONFIGS = FIXTURES / "configs"
AXOLOTL = sorted((FIXTURES / "axolotl").glob("*.yml"))
LLAMAFACTORY = sorted(p for p in (FIXTURES / "llamafactory").glob("*.yaml") if p.name != "expected.yaml")
HEAD = f"""\
model: {{path: {CONFIGS / 'tiny-model'}}}
datasets:
  - {{path: {CONFIGS / 'data' / 'alpaca_small.json'}}}
"""


def lint(capsys, *args) -> tuple[int, str]:
    code = main(["lint", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def errors_of(out: str) -> list[str]:
    return [line for line in out.splitlines() if ": error: " in line]


@pytest.mark.parametrize("path", AXOLOTL + LLAMAFACTORY, ids=[p.name for p in AXOLOTL + LLAMAFACTORY])
def test_a_foreign_config_is_one_error_naming_the_import_command(capsys, path):
    tool, name = ("axolotl", "an Axolotl") if path.suffix == ".yml" else ("llamafactory", "a LLaMA-Factory")
    code, out = lint(capsys, path)
    assert code == 2, out
    errors = errors_of(out)
    assert len(errors) == 1, out
    assert f"this looks like {name} config" in errors[0], out
    assert re.search(rf"{path.name}:\d+:1: error", errors[0]), "the position of the key that gave it away"
    assert f"runner import {tool} " in out and f"{path.name} -o cfg.yaml" in out, out


def test_train_on_a_foreign_config_says_the_same_and_writes_nothing(tmp_path):
    src = FIXTURES / "axolotl" / "lora_llama3_alpaca.yml"
    proc = subprocess.run([sys.executable, "-m", "runner", "train", str(src)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr
    assert "this looks like an Axolotl config" in proc.stderr and "runner import axolotl" in proc.stderr
    assert len(errors_of(proc.stderr)) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_following_the_hint_gives_a_config_that_lints(tmp_path, capsys):
    src = FIXTURES / "axolotl" / "lora_llama3_alpaca.yml"
    _, out = lint(capsys, src)
    command = re.search(r"runner import (\S+) (\S+) -o (\S+)", out)
    assert command, out
    tool, _, target = command.groups()
    assert main(["import", tool, str(src), "-o", str(tmp_path / target)]) == 0
    code, out = lint(capsys, tmp_path / target)
    assert code == 0, out


def test_a_runner_config_with_stray_foreign_keys_gets_per_key_suggestions(capsys, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(HEAD + textwrap.dedent("""\
        base_model: org/name
        learning_rate: 1e-4
        num_epochs: 3
        lr: 2e-4
        training:
          sequence_len: 512
          lora_r: 8
        """))
    code, out = lint(capsys, path)
    assert code == 2
    assert "looks like" not in out, "a file with runner's model section is runner's own"
    expected = {"base_model": "model.path", "learning_rate": "training.learning_rate",
                "num_epochs": "training.epochs", "lr": "training.learning_rate",
                "training.sequence_len": "sequence.max_length", "training.lora_r": "adapter.r"}
    for key, suggestion in expected.items():
        assert re.search(rf"{re.escape(key)}: unknown key .*did you mean '{re.escape(suggestion)}'", out), (key, out)


def test_a_key_in_several_sections_lists_them(capsys, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(HEAD + "beta: 0.1\n")
    code, out = lint(capsys, path)
    assert code == 2
    suggestion = re.search(r"did you mean (.*)\?", out)
    assert suggestion, out
    for stage in ("dpo", "kto", "orpo", "simpo", "cpo"):
        assert f"'training.{stage}.beta'" in suggestion.group(1), out


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt"])
def test_axolotl_dataset_type_suggests_format(capsys, tmp_path, fmt):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"model: {{path: {CONFIGS / 'tiny-model'}}}\n"
                    f"datasets:\n  - path: {CONFIGS / 'data' / 'alpaca_small.json'}\n    type: {fmt}\n")
    code, out = lint(capsys, path)
    assert code == 2
    assert "datasets.0.type:" in out and "cfg.yaml:4:" in out, out
    assert f"write `format: {fmt}`" in out and "file type" in out, out


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "n", "Yes", "OFF"])
def test_yaml11_booleans_where_a_boolean_is_expected_get_their_own_hint(capsys, tmp_path, word):
    path = tmp_path / "cfg.yaml"
    path.write_text(HEAD + f"sequence: {{packing: {word}}}\ntraining: {{liger: {word}}}\n")
    code, out = lint(capsys, path)
    assert code == 2
    want = "true" if word.lower() in ("yes", "on", "y") else "false"
    for key, line in (("sequence.packing", 4), ("training.liger", 5)):
        assert re.search(rf"cfg.yaml:{line}:\d+: error: {key}: .*{re.escape(repr(word))}", out), (key, out)
    assert out.count("YAML 1.2") == 2 and f"write {want}" in out, out


def test_yaml11_boolean_in_an_override_gets_the_hint(capsys):
    code = main(["plan", str(CONFIGS / "minimal.yaml"), "sequence.packing=yes"])
    out = capsys.readouterr().err
    assert code == 2 and "sequence.packing" in out and "YAML 1.2" in out and "write true" in out, out
