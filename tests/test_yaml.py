"""The YAML loader: YAML 1.2 typing (2e-4 is a number; on/off/yes/no stay strings), safe tags only,
duplicate keys refused, and hostile files (alias bomb, 10 MB, deep nesting) refused fast and clearly."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runner.cli import main
from runner.errors import UserError
from runner.plan.resolve import make_plan

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CONFIGS = FIXTURES / "configs"
BAD = FIXTURES / "bad_configs"
HEAD = f"""\
model: {{path: {CONFIGS / 'tiny-model'}}}
datasets:
  - {{path: {CONFIGS / 'data' / 'alpaca_small.json'}}}
"""


def write_cfg(tmp_path: Path, body: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(HEAD + textwrap.dedent(body))
    return path


def lint(capsys, path) -> tuple[int, str, float]:
    start = time.perf_counter()
    try:
        code = main(["lint", str(path)])
    except SystemExit as exit_:
        code = exit_.code
    elapsed = time.perf_counter() - start
    captured = capsys.readouterr()
    return code, captured.out + captured.err, elapsed


@pytest.mark.parametrize("text, value", [
    ("2e-4", 2e-4), ("2E-4", 2e-4), ("2.0e-4", 2e-4), ("+2e-4", 2e-4), ("0.0002", 2e-4), ("1e-3", 1e-3),
])
def test_scientific_notation_is_a_number(tmp_path, text, value):
    plan = make_plan(write_cfg(tmp_path, f"training: {{learning_rate: {text}}}\n"))
    lr = plan.training.learning_rate
    assert isinstance(lr, float) and not isinstance(lr, bool)
    assert lr == pytest.approx(value)


def test_integer_stays_integer_and_float_epochs_allowed(tmp_path):
    plan = make_plan(write_cfg(tmp_path, "training: {epochs: 1.5, micro_batch_size: 3, seed: 010}\n"))
    assert plan.training.epochs == 1.5
    assert plan.training.micro_batch_size == 3 and isinstance(plan.training.micro_batch_size, int)
    assert plan.training.seed == 10  # YAML 1.2: a leading zero is not octal


def test_quoted_number_is_a_string_and_fails_with_a_hint(capsys, tmp_path):
    code, out, _ = lint(capsys, write_cfg(tmp_path, 'training: {learning_rate: "2e-4"}\n'))
    assert code == 2
    assert "training.learning_rate" in out and "cfg.yaml:4" in out, out


@pytest.mark.parametrize("word", ["on", "off", "yes", "no", "y", "n", "On", "NO"])
def test_yaml11_booleans_stay_strings_where_the_schema_wants_a_string(tmp_path, word):
    plan = make_plan(write_cfg(tmp_path, f"""\
        tracking:
          wandb: {{project: {word}, mode: offline}}
        template: {{system_prompt: {word}}}
        """))
    assert plan.tracking.wandb.project == word
    assert plan.data.template.system_prompt == word


def test_true_and_false_are_booleans(tmp_path):
    plan = make_plan(write_cfg(tmp_path, "sequence: {packing: true}\ndata: {shuffle: false}\n"))
    assert plan.data.sequence.packing is True
    assert plan.data.shuffle is False


def test_dates_and_versions_stay_strings(tmp_path):
    # YAML 1.1 would build a datetime.date and a float here.
    plan = make_plan(write_cfg(tmp_path, """\
        name: 2024-01-01
        tracking:
          wandb: {project: "p", name: 2024-01-01, tags: [v2, 2024-01-02]}
        """))
    assert plan.name == "2024-01-01"
    assert plan.tracking.wandb.name == "2024-01-01"


def test_null_takes_the_default_decision(tmp_path):
    plan = make_plan(write_cfg(tmp_path, "adapter: {r: 4, alpha: ~}\n"))
    assert plan.adapter.alpha == 8  # null alpha means 2 x r


def test_alias_bomb_fails_fast_with_a_clear_message(capsys):
    code, out, elapsed = lint(capsys, BAD / "yaml_bomb.yaml")
    assert code == 2
    assert elapsed < 1.0, f"alias bomb took {elapsed:.2f} s"
    assert "alias" in out.lower() and "yaml_bomb.yaml" in out, out
    assert "Traceback" not in out


def test_ten_megabyte_config_fails_fast_with_a_clear_message(capsys, tmp_path):
    path = tmp_path / "huge.yaml"
    item = "  - {path: data.json, format: alpaca, num_samples: 10, weight: 1.0}\n"
    lines = [HEAD, "eval_datasets:\n"] + [item] * (10_000_000 // len(item) + 1)
    path.write_text("".join(lines))
    assert path.stat().st_size >= 10_000_000
    code, out, elapsed = lint(capsys, path)
    assert code == 2
    assert elapsed < 1.0, f"a 10 MB config took {elapsed:.2f} s"
    assert "huge.yaml" in out and re.search(r"bytes|MB|MiB|too (large|big)|size", out), out
    assert "Traceback" not in out


def test_config_just_under_any_size_cap_is_still_refused_fast(capsys, tmp_path):
    # 900 KB of list items: small enough to pass a 1 MiB byte cap, far more values than any config has.
    path = tmp_path / "wide.yaml"
    item = "  - {path: data.json, format: alpaca}\n"
    path.write_text(HEAD + "eval_datasets:\n" + item * (900_000 // len(item)))
    code, out, elapsed = lint(capsys, path)
    assert code == 2, out
    assert elapsed < 1.0, f"a 900 KB config took {elapsed:.2f} s to refuse"
    assert "wide.yaml" in out and "Traceback" not in out


def test_deep_nesting_fails_fast_with_a_clear_message(capsys):
    code, out, elapsed = lint(capsys, BAD / "deep_nesting.yaml")
    assert code == 2
    assert elapsed < 1.0
    assert re.search(r"nest|deep|depth", out.replace("deep_nesting.yaml", ""), re.IGNORECASE), out
    assert "Traceback" not in out


@pytest.mark.parametrize("opening, closing", [
    ("", ""),  # plain brackets
    ("[a#b, ", "]"),  # `#` not after a space is text, not a comment: the brackets after it still nest
    ("[it's, ", ", 'x']"),  # an apostrophe inside a plain scalar is not a quote
], ids=["brackets", "hash-inside-a-scalar", "apostrophe-inside-a-scalar"])
def test_very_deep_nesting_in_a_small_file_fails_cleanly_not_by_crashing(tmp_path, opening, closing):
    # 30,000 nested lists are 60 KB, far under any size cap; libyaml's composer recurses in C per level,
    # so this runs in a subprocess: a crash must fail this test, not kill pytest.
    depth = 30_000
    cfg = tmp_path / "tower.yaml"
    cfg.write_text(HEAD + "training: {epochs: " + opening + "[" * depth + "]" * depth + closing + "}\n")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "runner", "lint", str(cfg)], capture_output=True, text=True,
                          timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, f"exit {proc.returncode} (negative: killed by a signal)\n{proc.stderr[-2000:]}"
    assert re.search(r"nest|deep|depth", proc.stderr, re.IGNORECASE), proc.stderr[-2000:]
    assert elapsed < 3.0, f"{elapsed:.1f} s including interpreter start"


def test_python_tags_are_never_constructed(capsys, tmp_path):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(HEAD + f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    code, out, _ = lint(capsys, cfg)
    assert code == 2
    assert not marker.exists(), "a python/object tag ran code"
    assert "python/object" in out and "evil.yaml:4" in out, out


def test_duplicate_keys_are_an_error_not_last_wins(tmp_path):
    with pytest.raises(UserError) as info:
        make_plan(write_cfg(tmp_path, "training:\n  learning_rate: 1e-4\n  learning_rate: 2e-4\n"))
    text = str(info.value)
    assert "learning_rate" in text and "duplicate" in text.lower() and "cfg.yaml:6" in text, text


def test_duplicate_top_level_sections_are_an_error(tmp_path):
    with pytest.raises(UserError) as info:
        make_plan(write_cfg(tmp_path, "training: {epochs: 1}\ntraining: {epochs: 2}\n"))
    assert "training" in str(info.value) and "cfg.yaml:5" in str(info.value)


def test_malformed_yaml_points_at_the_line(tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text(HEAD + "training: {epochs: 1\nsequence: {max_length: 64}\n")
    with pytest.raises(UserError) as info:
        make_plan(cfg)
    assert re.search(r"broken\.yaml:[45]", str(info.value)), str(info.value)


def test_non_utf8_file_is_a_user_error(capsys, tmp_path):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes(HEAD.encode() + "template: {system_prompt: caf\xe9}\n".encode("latin-1"))
    code, out, _ = lint(capsys, cfg)
    assert code == 2
    assert "latin1.yaml" in out and "Traceback" not in out, out


def test_env_interpolation_fills_values(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNNER_TEST_PROJECT", "from-env")
    plan = make_plan(write_cfg(tmp_path, """\
        tracking:
          wandb: {project: "${env:RUNNER_TEST_PROJECT}", name: "run-${env:RUNNER_TEST_PROJECT}"}
        """))
    assert plan.tracking.wandb.project == "from-env"
    assert plan.tracking.wandb.name == "run-from-env"


def test_env_value_is_never_evaluated(monkeypatch, tmp_path):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("RUNNER_TEST_PROJECT", f"$(touch {marker})`touch {marker}`")
    plan = make_plan(write_cfg(tmp_path, 'tracking: {wandb: {project: "${env:RUNNER_TEST_PROJECT}"}}\n'))
    assert plan.tracking.wandb.project.startswith("$(touch")
    assert not marker.exists()


def test_unset_env_variable_is_an_error_naming_it(monkeypatch, tmp_path):
    monkeypatch.delenv("RUNNER_TEST_SURELY_NOT_SET", raising=False)
    with pytest.raises(UserError) as info:
        make_plan(write_cfg(tmp_path, 'tracking: {wandb: {project: "${env:RUNNER_TEST_SURELY_NOT_SET}"}}\n'))
    text = str(info.value)
    assert "RUNNER_TEST_SURELY_NOT_SET" in text and "tracking.wandb.project" in text and "cfg.yaml:4" in text
