"""Secret values (schema `x-secret`: model.token, tracking.wandb.api_key) never appear in any error or
warning: schema errors of a wrong type or shape, did-you-mean, overrides (well formed, misspelt or
not KEY=VALUE), YAML tag errors, `lint --format json`. Each case runs the real CLI in a fresh process
and greps its whole stdout and stderr for the value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.config import schema

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "fixtures" / "configs"
SECRET = "hf_Zq8sEcReTvAlUe1234567"
HEAD = f"datasets:\n  - {{path: {CONFIGS / 'data' / 'alpaca_small.json'}}}\n"
MODEL = f"model:\n  path: {CONFIGS / 'tiny-model'}\n"


def cli(*args, cwd) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "runner", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    return proc.returncode, proc.stdout + proc.stderr


def test_the_secret_keys_are_the_ones_marked_in_the_schema():
    assert ("model", "token") in schema.secret_paths() and ("tracking", "wandb", "api_key") in schema.secret_paths()


FILE_CASES = {
    "token_list": MODEL + f"  token: [{SECRET}]\n",
    "token_mapping": MODEL + f"  token: {{value: {SECRET}}}\n",
    "token_number": MODEL + "  token: 98765432101234567\n",
    "token_bad_tag": MODEL + f"  token: !!int {SECRET}\n",
    "api_key_list": MODEL + f"tracking:\n  wandb: {{project: p, api_key: [{SECRET}]}}\n",
    "api_key_number": MODEL + "tracking:\n  wandb: {project: p, api_key: 98765432101234567}\n",
    "model_as_list": f"model: [{{path: x, token: {SECRET}}}]\n",
    "wandb_as_list": MODEL + f"tracking:\n  wandb: [{{api_key: {SECRET}}}]\n",
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_secret_of_the_wrong_type_is_never_echoed(tmp_path, case, fmt):
    path = tmp_path / "cfg.yaml"
    path.write_text(FILE_CASES[case] + HEAD)
    code, out = cli("lint", "--format", fmt, path, cwd=tmp_path)
    assert code == 2, out
    secret = "98765432101234567" if "number" in case else SECRET
    assert secret not in out, out
    assert "cfg.yaml:" in out and ("token" in out or "api_key" in out or "model" in out or "wandb" in out), out
    assert "Traceback" not in out


@pytest.mark.parametrize("args", [
    ["model.tokn=" + SECRET],                       # misspelt: did-you-mean names token, not the value
    ["model.token", SECRET],                        # a space instead of '='
    ["model.token:" + SECRET],                      # a colon instead of '='
    ["tracking.wandb.api_kye=" + SECRET],
    [SECRET],
])
def test_overrides_never_echo_a_secret(tmp_path, args):
    code, out = cli("plan", CONFIGS / "wandb.yaml", *args, cwd=tmp_path)
    assert code == 2, out
    assert SECRET not in out, out
    assert "command line" in out and "Traceback" not in out, out


def test_a_secret_override_that_fails_elsewhere_is_not_echoed_in_the_position(tmp_path):
    """The position of an error names the override; for a secret key it leaves its value out."""
    code, out = cli("plan", CONFIGS / "minimal.yaml", "model.token=" + SECRET, "model.tokn=" + SECRET,
                    cwd=tmp_path)
    assert code == 2 and SECRET not in out, out
    assert "model.tokn=<not shown>" in out and "did you mean 'token'" in out, out


def test_well_formed_secret_override_works_and_is_not_printed(tmp_path):
    code, out = cli("plan", "--json", CONFIGS / "minimal.yaml", "model.token=" + SECRET, cwd=tmp_path)
    assert code == 0, out
    assert SECRET not in out
    plan, _ = json.JSONDecoder().raw_decode(out[out.index("{"):])  # stderr's warnings follow the JSON
    assert plan["config"]["model"]["token"] == "<secret>"


@pytest.mark.parametrize("uri", [f"https://bob:{SECRET}@mlflow.example.com", f"https://mlflow.example.com/?token={SECRET}"])
def test_an_mlflow_uri_with_credentials_is_refused_without_repeating_them(tmp_path, uri):
    (tmp_path / "c.yaml").write_text(MODEL + HEAD + f"tracking:\n  mlflow: {{tracking_uri: '{uri}'}}\n")
    code, out = cli("lint", "c.yaml", cwd=tmp_path)
    assert code == 2 and "tracking.mlflow.tracking_uri: holds credentials" in out and "c.yaml:" in out
    assert SECRET not in out and "MLFLOW_TRACKING_PASSWORD" in out


def test_a_bare_mlflow_uri_lints(tmp_path):
    (tmp_path / "c.yaml").write_text(MODEL + HEAD + "tracking:\n  mlflow: {tracking_uri: 'http://127.0.0.1:5000'}\n")
    code, out = cli("lint", "c.yaml", cwd=tmp_path)
    assert code == 0, out
