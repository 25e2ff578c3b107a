"""`runner push`: --dry-run on the quickstart run lists the files and the card, the card's metadata
loads with huggingface_hub's card classes, and nothing it would upload holds a secret or a local
path; planted secrets and paths refuse the upload naming file and line; no token, an unfinished run
and an unreachable Hub are clear errors (exit 2). The upload itself needs the Hub (no network
here): it is exercised up to the connection."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HF_TOKEN_SHAPE = re.compile(rb"hf_[A-Za-z0-9]{30,}")


def push(args, *, env_extra=None, cwd=None, drop=("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "runner", "push", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=600)


@pytest.fixture(scope="module")
def dry_run(quickstart_run, tmp_path_factory):
    home = tmp_path_factory.mktemp("hf-home")  # no stored token: a dry run needs none
    done = push([quickstart_run, "--repo", "acme/nova-135m", "--dry-run"], env_extra={"HF_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def push_here(args, capfd, monkeypatch, env=None):
    """The same command in this process (saves an interpreter start per call): (exit code, stdout, stderr)."""
    from runner.cli import main

    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    capfd.readouterr()
    code = main(["push", *map(str, args)])
    out, err = capfd.readouterr()
    return code, out, err


def _listing(stdout: str) -> dict:
    rows = {}
    for line in stdout.split("\nREADME.md:\n", 1)[0].splitlines()[1:-1]:
        name, size = line.split()[0], " ".join(line.split()[1:])
        rows[name] = size
    return rows


def _card(stdout: str) -> str:
    return stdout.split("\nREADME.md:\n\n", 1)[1]


def test_dry_run_lists_what_the_quickstart_upload_holds(dry_run, quickstart_run):
    files = _listing(dry_run)
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "README.md", "config.yaml", "plan.json"} <= set(files)
    assert not any(n.startswith(("checkpoints", ".runner", "training_args", "RUN_COMPLETE", "merged")) for n in files)
    size = (quickstart_run / "adapter_model.safetensors").stat().st_size
    assert files["adapter_model.safetensors"] == f"{size / 1024 / 1024:.1f} MB"
    assert dry_run.startswith("would upload to acme/nova-135m:")


def test_card_metadata_loads_with_huggingface_hub_card_classes(dry_run, quickstart_run, tmp_path):
    from huggingface_hub import ModelCard, ModelCardData

    card_text = _card(dry_run)
    (tmp_path / "README.md").write_text(card_text)
    card = ModelCard.load(tmp_path / "README.md", ignore_metadata_errors=False)
    plan = json.loads((quickstart_run / "plan.json").read_text())
    data = card.data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data.library_name == "peft" and data.pipeline_tag == "text-generation"
    assert data.license == "apache-2.0"  # from the GGUF file's general.license
    assert {"runner", "sft", "lora"} <= set(data.tags)
    assert data.to_dict()["runner"] == {f"{k}_hash": plan["hashes"][k] for k in ("config", "data", "model", "plan")}
    # A round trip through the card classes keeps every field, and the Hub's YAML block re-parses.
    again = ModelCardData(**data.to_dict(), ignore_metadata_errors=False)
    assert again.to_dict() == data.to_dict()
    assert ModelCard(card.content).data.to_dict() == data.to_dict()
    assert "You are a helpful assistant." in card.text
    assert "model = PeftModel.from_pretrained(base, 'acme/nova-135m')" in card.text


def test_nothing_uploaded_holds_a_secret_or_a_local_path(quickstart_run, tmp_path):
    """Independent of runner's own scan: every byte of every file the push would upload, grepped
    for token shapes and for this machine's folders."""
    from runner.ship.push import collect

    uploads, _ = collect(quickstart_run, merged=False, repo="acme/nova-135m", base_model=None, license=None,
                         scratch=tmp_path)
    plan = json.loads((quickstart_run / "plan.json").read_text())
    local = {str(quickstart_run), str(quickstart_run.resolve()), str(REPO), plan["model"]["path"],
             str(Path(plan["data"]["datasets"][0]["path"]).parent), plan["data"]["cache_dir"], sys.prefix,
             str(Path.home()) + "/"}
    assert len(uploads) >= 9
    for upload in uploads:
        data = upload.read()
        assert not HF_TOKEN_SHAPE.search(data), upload.path
        assert not re.search(rb"(?i)(api_key|wandb)[\"']?\s*[:=]\s*[\"']?[0-9a-f]{40}", data), upload.path
        if upload.path.endswith((".json", ".yaml", ".md", ".jinja", ".jsonl")):
            for folder in local:
                assert folder.encode() not in data, (upload.path, folder)
    adapter = json.loads(next(u for u in uploads if u.path == "adapter_config.json").read())
    assert adapter["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    uploaded_plan = json.loads(next(u for u in uploads if u.path == "plan.json").read())
    assert uploaded_plan["hashes"] == plan["hashes"] and uploaded_plan["output"]["dir"] == "<local>/quickstart"
    template = next(u for u in uploads if u.path == "chat_template.jinja").read().decode()
    assert template.count("You are a helpful assistant.") == 1


PLANTS = {
    "hf_token": ("metrics.jsonl", 'hf_' + "Ab3" * 12, "a Hugging Face token"),
    "wandb_key": ("metrics.jsonl", '"wandb_api_key": "' + "0123456789abcdef" * 2 + '01234567"', "a credential value"),
    "openai_key": ("metrics.jsonl", "sk-proj-" + "Zx9" * 10, "an API key"),
    "private_key": ("metrics.jsonl", "-----BEGIN RSA PRIVATE KEY-----", "a private key"),
    "run_dir_path": ("metrics.jsonl", None, "a local path"),
    "home_path": ("metrics.jsonl", str(Path.home()) + "/notes.txt", "a local path"),
    "generic_path": ("metrics.jsonl", '"log": "/home/alice/run/log.txt"', "an absolute local path"),
}


@pytest.mark.parametrize("kind", PLANTS)
def test_a_planted_secret_or_path_refuses_the_upload_naming_file_and_line(quickstart_copy, kind, capfd, monkeypatch):
    name, planted, what = PLANTS[kind]
    planted = planted or str(quickstart_copy.resolve())
    path = quickstart_copy / name
    lines = path.read_text().splitlines()
    lines.insert(2, json.dumps({"note": planted}) if not planted.startswith('"') else "{" + planted + "}")
    path.write_text("\n".join(lines) + "\n")
    code, out, err = push_here([quickstart_copy, "--repo", "acme/nova", "--dry-run"], capfd, monkeypatch)
    assert code == 2, out[-2000:] + err
    assert f"{name}:3: {what}" in err
    if kind in ("hf_token", "wandb_key", "openai_key"):
        secret = re.search(r"(hf_\w+|sk-[\w-]+|[0-9a-f]{40})", planted).group(0)
        assert secret not in err + out  # named by place, never echoed
    assert "would upload" not in out


def test_the_value_of_an_environment_secret_is_found_whatever_its_shape(quickstart_copy, capfd, monkeypatch):
    value = "plainlookingvalue42"  # matches no token pattern: found because WANDB_API_KEY holds it
    (quickstart_copy / "metrics.jsonl").write_text((quickstart_copy / "metrics.jsonl").read_text() + value + "\n")
    code, out, err = push_here([quickstart_copy, "--repo", "acme/nova", "--dry-run"], capfd, monkeypatch,
                               env={"WANDB_API_KEY": value})
    assert code == 2 and "a secret of this environment" in err and value not in err + out


def test_without_a_token_push_exits_2_and_says_how_to_log_in(quickstart_run, tmp_path):
    """No HF_TOKEN and no stored login (the run's config holds none either: model.token is never
    stored, and push would not read it)."""
    done = push([quickstart_run, "--repo", "acme/nova"], env_extra={"HF_HOME": str(tmp_path)})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no Hugging Face token" in done.stderr
    assert "huggingface-cli login" in done.stderr and "HF_TOKEN" in done.stderr


def test_an_unfinished_run_is_refused(quickstart_copy, capfd, monkeypatch):
    (quickstart_copy / "RUN_COMPLETE").unlink()
    code, _, err = push_here([quickstart_copy, "--repo", "acme/nova", "--dry-run"], capfd, monkeypatch)
    assert code == 2 and "RUN_COMPLETE" in err and "Traceback" not in err


def test_a_bad_repo_name_is_refused(quickstart_run, capfd, monkeypatch):
    code, _, err = push_here([quickstart_run, "--repo", "acme/nova/extra", "--dry-run"], capfd, monkeypatch)
    assert code == 2 and "--repo" in err


def test_an_unreachable_hub_is_a_clear_error_and_the_token_is_not_echoed(quickstart_run, tmp_path):
    with socket.socket() as s:  # a local port nobody listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "hf_" + "Qw7" * 12
    done = push([quickstart_run, "--repo", "acme/nova"], drop=("HF_HUB_OFFLINE",),
                env_extra={"HF_TOKEN": token, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}",
                           "HF_HOME": str(tmp_path)})
    assert done.returncode == 2 and "the upload to acme/nova failed" in done.stderr, done.stderr
    assert token not in done.stderr + done.stdout and "Traceback" not in done.stderr
    offline = push([quickstart_run, "--repo", "acme/nova"], env_extra={"HF_TOKEN": token, "HF_HOME": str(tmp_path)})
    assert offline.returncode == 2 and "HF_HUB_OFFLINE" in offline.stderr, offline.stderr


# ---- a run on a local base folder: --merged, --base-model ---------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import torch

    from runner.plan.resolve import make_plan
    from runner.train.command import run
    from tests.tiny_model import save_tiny_model, write_config

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("ship-push")
    model_dir = save_tiny_model(tmp / "model")
    cfg = write_config(tmp, model_dir, training={"max_steps": 2}, dataset={"num_samples": 4},
                       extra={"template": {"name": "tokenizer", "system_prompt": "You are tiny."}})
    return run(make_plan(cfg))


def test_an_adapter_of_a_local_base_needs_its_hub_id(tiny_run, capfd, monkeypatch):
    code, _, err = push_here([tiny_run, "--repo", "acme/tiny", "--dry-run"], capfd, monkeypatch)
    assert code == 2 and "--base-model" in err
    code, out, err = push_here([tiny_run, "--repo", "acme/tiny", "--dry-run", "--base-model", "acme/tiny-base",
                                "--license", "mit"], capfd, monkeypatch)
    assert code == 0, err
    assert "base_model: acme/tiny-base" in out and "license: mit" in out
    assert "AutoPeftModelForCausalLM.from_pretrained('acme/tiny')" in out


def test_merged_dry_run_merges_into_a_temporary_folder(tiny_run, capfd, monkeypatch):
    code, out, err = push_here([tiny_run, "--repo", "acme/tiny-merged", "--merged", "--dry-run", "--revision", "v1",
                                "--private"], capfd, monkeypatch)
    assert code == 0, err
    files = _listing(out)
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja",
            "README.md", "plan.json"} <= set(files)
    assert not any(n.startswith("adapter_") for n in files)
    assert out.startswith("would upload to acme/tiny-merged@v1 (private):")
    assert "library_name: transformers" in out and "- merged" in out and "license: other" in out
    assert not (tiny_run / "merged").exists()  # the run directory is left as it was
