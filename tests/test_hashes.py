"""Reproducible hashes (DESIGN.md "Hashes"), proven in both directions: what must not move them does not,
and what must move them moves exactly the right ones. Secrets never reach a hash or the printed plan."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.cli import main
from runner.plan.resolve import make_plan
from runner.plan.sections import to_dict

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CONFIGS = FIXTURES / "configs"
REPO = Path(__file__).resolve().parents[1]

CONFIG = """\
model: {path: tiny-model}
adapter: {kind: lora, r: 8}
datasets:
  - {path: data/alpaca.json, format: alpaca}
training: {epochs: 1, learning_rate: 2e-4}
tracking:
  wandb: {project: tiny, mode: offline}
  log_every: 10
output: {dir: "outputs/{name}"}
"""

# The same config with every mapping's keys in another order, other styles and comments.
CONFIG_REORDERED = """\
# same run, written differently
output:
  dir: "outputs/{name}"
tracking:
  log_every: 10
  wandb:
    mode: offline
    project: tiny
training:
  learning_rate: 0.0002
  epochs: 1
datasets:
  - format: alpaca
    path: data/alpaca.json
adapter: {r: 8, kind: lora}
model:
  path: tiny-model
"""


def make_project(root: Path, config: str = CONFIG) -> Path:
    """A run folder: config, a tiny alpaca file and a tiny model dir whose files the plan may hash but not
    load (the weights file is not even valid safetensors)."""
    (root / "data").mkdir(parents=True)
    shutil.copy(CONFIGS / "data" / "alpaca_small.json", root / "data" / "alpaca.json")
    model = root / "tiny-model"
    shutil.copytree(CONFIGS / "tiny-model", model)
    (model / "model.safetensors").write_bytes(b"not really weights" * 64)
    (root / "run.yaml").write_text(config)
    return root / "run.yaml"


def hashes(cfg: Path, overrides=()) -> dict:
    """The three hashes DESIGN.md defines (the plan may carry more detail beside them)."""
    h = make_plan(cfg, list(overrides)).hashes
    return {k: getattr(h, k) for k in ("config", "data", "plan")}


def flip_one_byte(path: Path) -> None:
    """Change one byte, keep the size; move mtime on so no (path, size, mtime) cache can miss it."""
    data = bytearray(path.read_bytes())
    i = data.index(b"hello")
    data[i] = ord("j")
    st = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def changed(a: dict, b: dict) -> set:
    return {k for k in a if a[k] != b[k]}


@pytest.fixture
def project(tmp_path) -> Path:
    return make_project(tmp_path / "one")


def test_three_hashes_distinct_and_stable(project):
    assert {"config", "data", "plan"} <= set(to_dict(make_plan(project).hashes))
    h = hashes(project)
    assert all(isinstance(v, str) and len(v) >= 8 for v in h.values())
    assert len(set(h.values())) == 3
    assert hashes(project) == h


def test_same_config_and_data_in_another_directory_give_identical_hashes(project, tmp_path, monkeypatch):
    other = make_project(tmp_path / "elsewhere" / "deeper" / "copy")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert hashes(other) == hashes(project)


def test_one_byte_of_a_dataset_changes_data_and_plan_not_config(project):
    before = hashes(project)
    flip_one_byte(project.parent / "data" / "alpaca.json")
    assert changed(before, hashes(project)) == {"data", "plan"}


def test_mtime_alone_changes_nothing(project):
    before = hashes(project)
    data = project.parent / "data" / "alpaca.json"
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert hashes(project) == before


def test_tokenizer_bytes_change_data_and_plan_not_config(project):
    before = hashes(project)
    tok = project.parent / "tiny-model" / "tokenizer_config.json"
    config = json.loads(tok.read_text())
    config["model_max_length"] = 256
    tok.write_text(json.dumps(config))
    assert changed(before, hashes(project)) == {"data", "plan"}


def test_model_weights_change_plan_only(project):
    before = hashes(project)
    (project.parent / "tiny-model" / "model.safetensors").write_bytes(b"other weights" * 64)
    assert changed(before, hashes(project)) == {"plan"}


@pytest.mark.parametrize("old, new", [
    ('output: {dir: "outputs/{name}"}', 'output: {dir: "/somewhere/else/{name}-{plan_hash}"}'),
    ("project: tiny", "project: another-project"),
    ("log_every: 10", "log_every: 1"),
    ("wandb: {project: tiny, mode: offline}", "wandb: {project: tiny, mode: disabled, tags: [a, b]}"),
    ("  log_every: 10\n", "  log_every: 10\n  progress_bar: false\n"),
])
def test_output_and_tracking_change_no_hash(tmp_path, old, new):
    base = make_project(tmp_path / "a")
    assert old in CONFIG
    edited = make_project(tmp_path / "b", CONFIG.replace(old, new))
    assert hashes(edited) == hashes(base)


def test_learning_rate_changes_config_and_plan_not_data(project, tmp_path):
    edited = make_project(tmp_path / "b", CONFIG.replace("learning_rate: 2e-4", "learning_rate: 1e-4"))
    assert changed(hashes(project), hashes(edited)) == {"config", "plan"}


@pytest.mark.parametrize("old, new", [
    ("kind: lora, r: 8}", "kind: lora, r: 4}"),
    ("epochs: 1,", "epochs: 2,"),
])
def test_training_keys_change_config_and_plan_not_data(project, tmp_path, old, new):
    edited = make_project(tmp_path / "b", CONFIG.replace(old, new))
    assert changed(hashes(project), hashes(edited)) == {"config", "plan"}


@pytest.mark.parametrize("extra", [
    "sequence: {max_length: 64}\n",
    "template: {name: chatml}\n",
    "datasets:\n  - {path: data/alpaca.json, format: alpaca, num_samples: 3}\n",
])
def test_data_pipeline_keys_change_data_hash(project, tmp_path, extra):
    text = CONFIG.replace("datasets:\n  - {path: data/alpaca.json, format: alpaca}\n", "") + extra \
        if extra.startswith("datasets") else CONFIG + extra
    edited = make_project(tmp_path / "b", text)
    diff = changed(hashes(project), hashes(edited))
    assert {"data", "plan"} <= diff, diff


JINJA = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
LOCAL_INPUTS = {
    # a tokenizer folder of its own, and a Jinja chat template file, both beside the config
    "tokenizer": ("model: {path: tiny-model}", "model: {path: tiny-model, tokenizer: tok}",
                  "tok/tokenizer_config.json"),
    "jinja": ("adapter:", "template: {name: jinja, jinja: chat.jinja}\nadapter:", "chat.jinja"),
}


def make_project_with(root: Path, kind: str) -> tuple[Path, Path]:
    old, new, changing = LOCAL_INPUTS[kind]
    cfg = make_project(root, CONFIG.replace(old, new))
    shutil.copytree(CONFIGS / "tiny-model", root / "tok")
    (root / "chat.jinja").write_text(JINJA)
    return cfg, root / changing


@pytest.mark.parametrize("kind", sorted(LOCAL_INPUTS))
def test_other_local_inputs_are_hashed_by_content_not_path(tmp_path, kind):
    one, _ = make_project_with(tmp_path / "one", kind)
    two, changing = make_project_with(tmp_path / "elsewhere" / "two", kind)
    assert hashes(two) == hashes(one), "copying the project to another folder must not change any hash"
    before = hashes(two)
    changing.write_text(changing.read_text().replace("im_start", "im_begin").replace("128", "256"))
    assert changed(before, hashes(two)) == {"data", "plan"}


def test_reordering_keys_changes_nothing(project, tmp_path):
    reordered = make_project(tmp_path / "b", CONFIG_REORDERED)
    assert hashes(reordered) == hashes(project)


def test_writing_out_defaults_changes_nothing(project, tmp_path):
    explicit = CONFIG.replace("{kind: lora, r: 8}", "{kind: lora, r: 8, alpha: null, dropout: 0.05, dora: false}")
    explicit += "sequence: {packing: false, max_length: 2048}\nversion: 1\n"
    edited = make_project(tmp_path / "b", explicit)
    assert hashes(edited) == hashes(project)


# --- secrets ------------------------------------------------------------------------------------------

SECRET_TOKEN = "hf_SuperSecretToken123456"
SECRET_KEY = "wandb_SecretApiKey987654"
SECRET_CONFIG = CONFIG.replace("model: {path: tiny-model}", 'model: {path: tiny-model, token: "${env:RUNNER_TEST_HF_TOKEN}"}') \
    .replace("project: tiny,", 'project: tiny, api_key: "${env:RUNNER_TEST_WANDB_KEY}",')


@pytest.fixture
def secret_project(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RUNNER_TEST_HF_TOKEN", SECRET_TOKEN)
    monkeypatch.setenv("RUNNER_TEST_WANDB_KEY", SECRET_KEY)
    return make_project(tmp_path / "s", SECRET_CONFIG)


def test_secrets_reach_the_plan_only_through_plan_secrets(secret_project):
    plan = make_plan(secret_project)
    assert plan.secrets.get("model.token") == SECRET_TOKEN
    assert plan.secrets.get("tracking.wandb.api_key") == SECRET_KEY
    assert not hasattr(plan.model, "token")
    for text in (plan.to_json(), json.dumps(plan.to_dict()), repr(plan)):
        assert SECRET_TOKEN not in text and SECRET_KEY not in text


def test_secrets_change_no_hash(secret_project, project, monkeypatch):
    with_secrets = hashes(secret_project)
    monkeypatch.setenv("RUNNER_TEST_HF_TOKEN", "hf_another_token")
    monkeypatch.setenv("RUNNER_TEST_WANDB_KEY", "another_key")
    assert hashes(secret_project) == with_secrets
    assert hashes(project) == with_secrets  # no secrets at all


def test_secret_written_inline_is_not_printed_either(tmp_path, capsys):
    cfg = make_project(tmp_path / "i", CONFIG.replace("model: {path: tiny-model}",
                                                      f"model: {{path: tiny-model, token: {SECRET_TOKEN}}}"))
    for args in (["plan", str(cfg)], ["plan", "--json", str(cfg)], ["lint", str(cfg)]):
        assert main(args) == 0
        captured = capsys.readouterr()
        assert SECRET_TOKEN not in captured.out + captured.err, args


def test_cli_plan_never_prints_secrets(secret_project):
    env = {**os.environ, "RUNNER_TEST_HF_TOKEN": SECRET_TOKEN, "RUNNER_TEST_WANDB_KEY": SECRET_KEY}
    for extra in ([], ["--json"]):
        proc = subprocess.run([sys.executable, "-m", "runner", "plan", str(secret_project), *extra], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert SECRET_TOKEN not in proc.stdout + proc.stderr and SECRET_KEY not in proc.stdout + proc.stderr
        if extra:
            assert {"config", "data", "plan"} <= set(json.loads(proc.stdout)["hashes"])


def test_secret_in_an_error_message_is_not_echoed(tmp_path, capsys, monkeypatch):
    # A secret given where the schema wants something else must not be quoted back in the error.
    monkeypatch.setenv("RUNNER_TEST_HF_TOKEN", SECRET_TOKEN)
    cfg = make_project(tmp_path / "e", CONFIG.replace("model: {path: tiny-model}",
                                                      'model: {path: tiny-model, hf_token: "${env:RUNNER_TEST_HF_TOKEN}"}'))
    assert main(["lint", str(cfg)]) == 2
    out = capsys.readouterr()
    assert "model.hf_token" in out.out + out.err
    assert SECRET_TOKEN not in out.out + out.err


def test_hub_model_plans_offline_and_says_what_is_unresolved(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))  # not cached here
    plan = make_plan(CONFIGS / "hub_model.yaml")
    assert plan.model.source == "hub"
    assert plan.model.path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert plan.hashes.config  # the config part never needs the hub
    text = json.dumps(to_dict(plan.hashes))
    assert "unresolved" in text and "SmolLM2-135M-Instruct" in text, text
    local = make_plan(CONFIGS / "lora.yaml")
    assert "SmolLM2" not in json.dumps(to_dict(local.hashes)) and not local.hashes.unresolved


def test_secret_given_as_an_override_is_neither_printed_nor_hashed(project, capsys):
    override = f"model.token={SECRET_TOKEN}"
    assert hashes(project, [override]) == hashes(project)
    assert make_plan(project, [override]).secrets.get("model.token") == SECRET_TOKEN
    for args in (["plan", str(project), override], ["plan", "--json", str(project), override],
                 ["plan", str(project), override, "training.learning_rate=abc"]):
        main(args)
        captured = capsys.readouterr()
        assert SECRET_TOKEN not in captured.out + captured.err, args
