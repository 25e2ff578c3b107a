"""`runner lint`: every valid fixture passes, every broken one fails with a message a person can act on
(key path, file:line, what was expected, did-you-mean), all errors of a file at once, no traceback.

The corpus lives in tests/fixtures/bad_configs/; expected.yaml says what each file's output must contain.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from runner.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CONFIGS = FIXTURES / "configs"
BAD = FIXTURES / "bad_configs"
REPO = Path(__file__).resolve().parents[1]
EXPECTED = yaml.safe_load((BAD / "expected.yaml").read_text())
VALID = sorted(p.name for p in CONFIGS.glob("*.yaml"))
UNSET_VAR = "RUNNER_TEST_SURELY_NOT_SET"


def run_main(capsys, *args) -> tuple[int, str]:
    """runner.cli.main in this process: (exit code, stdout + stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse usage errors exit instead of returning
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    """`python -m runner ...` in a fresh process, as a user or CI runs it."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop(UNSET_VAR, None)
    return subprocess.run([sys.executable, "-m", "runner", *map(str, args)], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=120)


def without_file_names(output: str) -> str:
    """Output with every config file name removed, so that `cycle` cannot match `extends_cycle_a.yaml`."""
    return re.sub(r"[\w./-]+\.ya?ml", "<file>", output)


def missing_items(output: str, items: list) -> list:
    """The expected items not found in `output` (case-insensitive; a list item means any one of).
    Items naming a .yaml file are looked up in the raw output, all others where file names are blanked."""
    raw, scrubbed = output.lower(), without_file_names(output).lower()
    missing = []
    for item in items:
        alternatives = item if isinstance(item, list) else [item]
        if not any(str(a).lower() in (raw if ".yaml" in str(a) else scrubbed) for a in alternatives):
            missing.append(item)
    return missing


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch):
    monkeypatch.delenv(UNSET_VAR, raising=False)


def test_corpus_has_at_least_30_cases_and_every_file_has_expectations():
    files = {p.name for p in BAD.glob("*.yaml")} - {"expected.yaml"}
    assert len(files) >= 30
    assert files == set(EXPECTED), "bad_configs/*.yaml and expected.yaml must list the same files"
    for name, items in EXPECTED.items():
        assert items, f"{name} has no expectations"


def test_corpus_yaml_bomb_is_small():
    # The point of the bomb is that it is tiny on disk and huge when expanded.
    assert (BAD / "yaml_bomb.yaml").stat().st_size < 600


@pytest.mark.parametrize("name", VALID)
def test_valid_config_exits_0(capsys, name):
    code, out = run_main(capsys, "lint", CONFIGS / name)
    assert code == 0, out
    assert "Traceback" not in out


def test_minimal_config_lints_silently_ok(capsys):
    code, out = run_main(capsys, "lint", CONFIGS / "minimal.yaml")
    assert code == 0
    assert "warning" not in out.lower() and "error" not in out.lower(), out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_config_exits_2_naming_key_and_line(capsys, name):
    code, out = run_main(capsys, "lint", BAD / name)
    assert code == 2, out
    assert "Traceback" not in out, out
    missing = missing_items(out, EXPECTED[name])
    assert not missing, f"{name}: output lacks {missing}:\n{out}"


@pytest.mark.parametrize("name, suggestion", [
    ("unknown_key_top.yaml", "adapter"),
    ("unknown_key_nested.yaml", "r"),
    ("unknown_key_deep.yaml", "beta"),
    ("unknown_key_dataset.yaml", "format"),
    ("enum_stage_space.yaml", "sft"),
    ("enum_stage_misspelt.yaml", "sft"),
    ("enum_dataset_format.yaml", "alpaca"),
    ("enum_backend.yaml", "fsdp"),
    ("enum_template_name.yaml", "chatml"),
])
def test_misspellings_get_a_did_you_mean(capsys, name, suggestion):
    code, out = run_main(capsys, "lint", BAD / name)
    assert code == 2
    pattern = rf"did you mean\W{{0,3}}{re.escape(suggestion)}\b"
    assert re.search(pattern, out, re.IGNORECASE), f"no 'did you mean {suggestion}' in:\n{out}"


def test_all_errors_of_one_file_are_reported_at_once(capsys):
    code, out = run_main(capsys, "lint", BAD / "multiple_errors.yaml")
    assert code == 2
    # Three problems on three lines, each reported on its own line with its own position.
    for key, line in [("adapter.r", 4), ("datasets.0.format", 7), ("training.stage", 9)]:
        assert any(key in row and f"multiple_errors.yaml:{line}" in row for row in out.splitlines()), (key, out)


def test_errors_name_what_was_expected(capsys):
    code, out = run_main(capsys, "lint", BAD / "adapter_r_zero.yaml")
    assert code == 2
    assert re.search(r">=\s*1|at least 1|minimum", out), out
    code, out = run_main(capsys, "lint", BAD / "enum_quant_bits.yaml")
    assert code == 2
    assert "4" in out and "8" in out, out


def test_lint_many_files_reports_each_and_fails_if_any_fails(capsys):
    bad = ["enum_stage_misspelt.yaml", "type_lr_string.yaml"]
    code, out = run_main(capsys, "lint", CONFIGS / "lora.yaml", *(BAD / b for b in bad), CONFIGS / "dpo.yaml")
    assert code == 2
    for b in bad:
        assert b in out, out
    code, out = run_main(capsys, "lint", CONFIGS / "lora.yaml", CONFIGS / "dpo.yaml", CONFIGS / "kto.yaml")
    assert code == 0, out


def test_trust_remote_code_is_a_warning_that_names_the_risk(capsys):
    code, out = run_main(capsys, "lint", CONFIGS / "warn_trust_remote_code.yaml")
    assert code == 0, out
    assert "warning" in out.lower()
    assert "trust_remote_code" in out
    assert re.search(r"arbitrary|execut|\bruns?\b|untrusted|malicious|security", out, re.IGNORECASE), out


def test_semantic_errors_and_warnings_are_reported_together(capsys, tmp_path):
    cfg = tmp_path / "both.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        model: {{path: {CONFIGS / 'tiny-model'}, trust_remote_code: true}}
        datasets:
          - {{path: {CONFIGS / 'data' / 'dpo_small.json'}, format: preference}}
        sequence: {{packing: true}}
        training: {{stage: dpo}}
        """))
    code, out = run_main(capsys, "lint", cfg)
    assert code == 2
    assert "sequence.packing" in out and "both.yaml:4" in out, out
    assert "warning" in out and "trust_remote_code" in out, out


def test_missing_config_file_is_a_user_error(capsys, tmp_path):
    code, out = run_main(capsys, "lint", tmp_path / "nope.yaml")
    assert code == 2
    assert "nope.yaml" in out and "Traceback" not in out


# --- end to end, in a fresh process -----------------------------------------------------------------


def test_cli_valid_config_exits_0():
    proc = run_cli("lint", CONFIGS / "lora.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_broken_configs_exit_2_without_traceback():
    names = ["unknown_key_nested.yaml", "yaml_bomb.yaml", "malformed_bracket.yaml", "extends_cycle_a.yaml"]
    proc = run_cli("lint", *(BAD / n for n in names))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    for n in names:
        assert n in out, (n, out)


def test_cli_format_json_for_ci():
    proc = run_cli("lint", "--format", "json", CONFIGS / "lora.yaml", BAD / "enum_stage_misspelt.yaml")
    assert proc.returncode == 2, proc.stderr
    report = json.loads(proc.stdout)
    text = json.dumps(report)
    assert "enum_stage_misspelt.yaml" in text and "training.stage" in text and "sft" in text
    proc = run_cli("lint", "--format", "json", CONFIGS / "warn_trust_remote_code.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "trust_remote_code" in json.dumps(json.loads(proc.stdout))


def test_cli_debug_shows_the_traceback():
    proc = run_cli("plan", BAD / "type_lr_string.yaml")
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    proc = run_cli("--debug", "plan", BAD / "type_lr_string.yaml")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "training.learning_rate" in proc.stderr, proc.stderr


def test_lint_and_plan_import_no_ml_library():
    script = textwrap.dedent(f"""\
        import sys
        from runner.cli import main
        assert main(["lint", {str(CONFIGS / 'lora_all_options.yaml')!r}, {str(CONFIGS / 'dpo.yaml')!r}]) == 0
        assert main(["lint", {str(BAD / 'multiple_errors.yaml')!r}]) == 2
        assert main(["plan", {str(CONFIGS / 'qlora.yaml')!r}]) == 0
        assert main(["plan", "--json", {str(CONFIGS / 'kto.yaml')!r}]) == 0
        heavy = [m for m in ("torch", "transformers", "peft", "trl", "datasets") if m in sys.modules]
        print("HEAVY", heavy, file=sys.stderr)
        sys.exit(1 if heavy else 0)
        """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HEAVY []" in proc.stderr
