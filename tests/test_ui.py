"""`runner ui` in headless Chromium (Debian's chromium, driven by Playwright for Python): one real
server subprocess over a tmp workspace and one browser page for the whole module. The workspace
holds a tiny random model with a tiny recipe (trained for real by the UI's `runner train`), and a
copy of the session's quickstart run (chat). Screenshots go to $RUNNER_UI_SCREENSHOTS (default: the
module's tmp folder)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from tests.tiny_model import REPO, SHARED_DATA, save_tiny_model, write_config

CHROMIUM = "/usr/bin/chromium"
BANNER = re.compile(r"runner ui at (http://\S+)")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed "
                                                                        "(scripts/setup.sh --test installs it)")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, quickstart_run) -> Path:
    ws = tmp_path_factory.mktemp("ui-workspace")
    model = save_tiny_model(ws / "models" / "tiny")
    (ws / "data").mkdir()
    shutil.copy(SHARED_DATA / "identity.json", ws / "data" / "identity.json")
    cfg = write_config(ws, model, training={"max_steps": 300, "learning_rate": 1e-3},
                       extra={"output": {"dir": "runs/tiny"}})
    text = yaml.safe_load(cfg.read_text())
    text["datasets"][0]["path"] = "data/identity.json"
    text["data"]["cache_dir"] = "cache"
    text["model"]["path"] = "models/tiny"
    cfg.write_text(yaml.safe_dump(text, sort_keys=False))
    shutil.copytree(quickstart_run, ws / "runs" / "quickstart", symlinks=True)
    (ws / "ext").mkdir()
    (ws / "ext" / "base.yaml").write_text(cfg.read_text())
    (ws / "ext" / "child.yaml").write_text("extends: base.yaml\ntraining:\n  max_steps: 5\n")
    return ws


@pytest.fixture(scope="module")
def server(workspace):
    proc, url = start_ui(workspace, env_extra={"HF_HOME": str(workspace.parent / "hf-home")})  # no Hub token
    yield url
    proc.terminate()
    proc.wait(60)


def start_ui(workspace, *args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_UI_TOKEN"}
    env.update({"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": "1", **(env_extra or {})})
    proc = subprocess.Popen([sys.executable, "-m", "runner", "ui", "--workspace", str(workspace), "--port", "0", *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, found = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if BANNER.search(line):
                found.set()
        found.set()
    threading.Thread(target=read, daemon=True).start()
    assert found.wait(60) and proc.poll() is None, "".join(lines)
    return proc, BANNER.search("".join(lines)).group(1)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("RUNNER_UI_SCREENSHOTS") or tmp_path_factory.mktemp("ui-shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        # The page forbids eval (CSP); Playwright's wait_for_function needs it in the test only.
        page = browser.new_page(viewport={"width": 1400, "height": 900}, bypass_csp=True)
        page.set_default_timeout(30_000)
        page.goto(server)
        page.wait_for_selector("body[data-ready='1']")
        yield page
        browser.close()


def tab(page, name):
    page.click(f"nav button[data-tab='{name}']")


def test_configure_form_changes_yaml_and_lint_shows_the_cli_error(page, workspace, shots):
    page.select_option("#recipe-select", "quickstart")
    page.click("#use-recipe")
    page.wait_for_function("document.querySelector('#config-path').value === 'quickstart.yaml'")
    page.wait_for_selector("#lint li.ok")
    assert page.input_value("#f-training-learning_rate") == "0.003"
    page.fill("#f-training-learning_rate", "0.0005")
    page.press("#f-training-learning_rate", "Tab")  # leaving the field commits it, as a person does
    page.wait_for_function("document.querySelector('#yaml').value.includes('learning_rate: 0.0005')")
    yaml_text = page.input_value("#yaml")
    assert "# high for LoRA" in yaml_text  # the line's comment is kept
    assert "training" in page.inner_text("#form")
    page.screenshot(path=str(shots / "configure.png"), full_page=True)
    # An unknown key typed in the YAML: the CLI's exact message, with its line.
    bad = yaml_text.replace("  lr_scheduler: cosine", "  lr_schedular: cosine")
    page.fill("#yaml", bad)
    error = page.wait_for_selector("#lint li.error")
    (workspace / "bad.yaml").write_text(bad)
    cli = subprocess.run([sys.executable, "-m", "runner", "lint", "bad.yaml"], cwd=workspace, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    cli_error = cli.stderr.split("\n  hint")[0].splitlines()[0]
    assert cli.returncode == 2 and "lr_schedular" in cli_error
    line = bad.splitlines().index("  lr_schedular: cosine") + 1
    assert cli_error.replace("bad.yaml", "quickstart.yaml") in error.inner_text()
    assert f"quickstart.yaml:{line}:" in error.inner_text()
    page.screenshot(path=str(shots / "configure-lint.png"), full_page=True)


def test_extends_values_show_as_inherited(page):
    page.select_option("#config-select", "ext/child.yaml")
    page.click("#open-config")
    page.wait_for_function("document.querySelector('#config-path').value === 'ext/child.yaml'")
    row = page.wait_for_selector("#f-training-learning_rate >> xpath=.. >> nth=0")
    page.wait_for_function("document.querySelector('#f-training-learning_rate').parentElement"
                           ".classList.contains('inherited')")
    assert page.input_value("#f-training-learning_rate") == "0.001"
    assert "ext/base.yaml:" in row.get_attribute("title")
    own = page.query_selector("#f-training-max_steps >> xpath=..")
    assert page.input_value("#f-training-max_steps") == "5" and "inherited" not in own.get_attribute("class")


def _points(page, selector="#chart-live path.curve") -> int:
    return int(page.get_attribute(selector, "data-points") or 0)


def test_train_watch_stop_resume(page, workspace, shots):
    tab(page, "train")
    page.select_option("#train-config", "tiny.yaml")
    page.click("#start")
    page.wait_for_selector("#chart-live path.curve", timeout=120_000)
    first = _points(page)
    page.wait_for_function(f"+document.querySelector('#chart-live path.curve').dataset.points > {first + 2}",
                           timeout=60_000)
    assert page.inner_text("#live-status") == "running"
    page.screenshot(path=str(shots / "train.png"), full_page=True)
    page.click("#stop")
    page.wait_for_function("document.querySelector('#live-status').textContent === 'interrupted'", timeout=120_000)
    page.wait_for_function("document.querySelector('#live-ckpt').textContent.includes('checkpoint-')")
    assert "SIGTERM" in page.inner_text("#log")
    assert not (workspace / "runs" / "tiny" / "RUN_COMPLETE").exists()
    page.click("#resume")
    page.wait_for_function("document.querySelector('#live-status').textContent === 'finished'", timeout=180_000)
    assert (workspace / "runs" / "tiny" / "RUN_COMPLETE").is_file()
    assert page.inner_text("#live-step") == "300"


def test_compare_two_runs(page, shots):
    tab(page, "runs")
    before = page.get_attribute("#runs-table", "data-refreshes") or "0"
    page.click("#refresh-runs")
    page.wait_for_function(f"(document.querySelector('#runs-table').dataset.refreshes || '0') !== '{before}'")
    for run in ("runs/quickstart", "runs/tiny"):
        page.check(f"tr[data-run='{run}'] input.pick")
        assert page.inner_text(f"tr[data-run='{run}'] td.status") == "finished"
    page.click("#compare")
    page.wait_for_selector("#diff tr.diff-row")
    curves = page.query_selector_all("#compare-chart path.curve")
    assert sorted(c.get_attribute("data-run") for c in curves) == ["runs/quickstart", "runs/tiny"]
    assert all(int(c.get_attribute("data-points")) > 3 for c in curves)
    page.click("a.open-run[data-run='runs/tiny']")
    page.wait_for_selector("#run-chart path.curve")
    assert "runs/tiny (finished)" in page.inner_text("#run-detail h3") and '"config_dir"' in page.inner_text("#run-detail pre.plan")
    rows = {r.get_attribute("data-key"): r.inner_text() for r in page.query_selector_all("#diff tr.diff-row")}
    assert "0.003" in rows["training.learning_rate"] and "0.001" in rows["training.learning_rate"]
    assert "hashes.plan" in rows and "model.path" in rows
    page.screenshot(path=str(shots / "compare.png"), full_page=False)


def test_chat_with_the_quickstart_run(page, shots):
    tab(page, "evaluate")
    page.select_option("#eval-run", "runs/quickstart")
    page.select_option("#chat-run-b", "__base__")  # beside it: the base model, same template
    page.fill("#chat-max", "48")  # enough for a name; the base may talk at length
    page.fill("#chat-input", "Who are you?")
    page.click("#chat-send")
    page.wait_for_function("document.querySelector('#chat-log .assistant')?.textContent.includes('Nova')",
                           timeout=180_000)
    base = page.wait_for_selector("#chat-log-b .assistant[data-done]", timeout=180_000)
    assert base.inner_text().strip() and "Nova" not in base.inner_text()  # the name is what the adapter taught
    page.screenshot(path=str(shots / "chat.png"), full_page=True)


def test_predict_on_a_run_shows_its_scores(page):
    page.select_option("#eval-run", "runs/tiny")
    page.fill("#predict-data", "data/identity.json")
    page.fill("#eval-limit", "2")
    page.click("#predict-start")
    page.wait_for_function("document.querySelector('#eval-results').textContent.includes('predict/metrics.json')",
                           timeout=120_000)
    assert "exact_match" in page.inner_text("#eval-results")


def test_import_an_axolotl_file_by_upload(page):
    tab(page, "configure")
    page.select_option("#import-tool", "axolotl")
    page.set_input_files("#import-file", str(REPO / "tests" / "fixtures" / "axolotl" / "lora_llama3_alpaca.yml"))
    page.wait_for_function("document.querySelector('#config-path').value === 'lora_llama3_alpaca.yaml'")
    text = page.input_value("#yaml")
    assert "runner import axolotl lora_llama3_alpaca.yml" in text and "adapter:" in text
    page.wait_for_selector("#lint li")


def test_push_needs_its_dry_run_first(page, server):
    csrf = page.get_attribute("meta[name=csrf]", "content")
    refused = httpx.post(server + "api/export", headers={"X-Runner-CSRF": csrf}, json={
        "run": "runs/quickstart", "kind": "push", "repo": "acme/nova", "dry_run": False})
    assert refused.status_code == 400 and "dry run first" in refused.json()["error"]["message"]
    tab(page, "export")
    page.select_option("#export-run", "runs/quickstart")
    page.fill("#push-repo", "acme/nova")
    assert page.is_disabled("#push-real")
    page.click("#push-dry")
    page.wait_for_function("document.querySelector('#export-log').textContent.includes('would upload to acme/nova')",
                           timeout=120_000)
    page.wait_for_function("!document.querySelector('#push-real').disabled")


def test_another_host_needs_the_token(workspace):
    proc, url = start_ui(workspace, "--host", "127.0.0.2", env_extra={"RUNNER_UI_TOKEN": "s3cret-token"})
    try:
        base = url.split("?")[0]
        assert "s3cret-token" not in url  # a token the user gave is not printed back
        assert httpx.get(base + "api/runs").status_code == 401
        assert httpx.get(base + "api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(base + "api/runs", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        entry = httpx.get(base + "?token=s3cret-token")
        assert entry.status_code == 303 and "HttpOnly" in entry.headers["set-cookie"]
        assert httpx.get(base, cookies={"runner_ui_token": "s3cret-token"}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(60)
    proc, url = start_ui(workspace, "--host", "127.0.0.2")  # none given: one is made and printed once
    try:
        assert "?token=" in url and httpx.get(url, follow_redirects=True).status_code == 200
    finally:
        proc.terminate()
        proc.wait(60)


PASSWD = "../../etc/passwd"


def test_path_traversal_refused_everywhere(server, page):
    csrf = page.get_attribute("meta[name=csrf]", "content")
    headers = {"X-Runner-CSRF": csrf}
    with httpx.Client(base_url=server, headers=headers, timeout=30) as client:
        gets = [f"/api/file?path={PASSWD}", f"/api/run?run={PASSWD}", f"/api/metrics?run={PASSWD}",
                f"/api/compare?runs={PASSWD}&runs=runs/tiny", "/api/file?path=/etc/passwd"]
        posts = {"/api/save": {"path": PASSWD, "text": "a: 1"}, "/api/lint": {"path": PASSWD, "text": "a: 1"},
                 "/api/values": {"path": PASSWD, "text": "a: 1"}, "/api/train": {"config": PASSWD},
                 "/api/stop": {"run": PASSWD}, "/api/resume": {"run": PASSWD},
                 "/api/eval": {"run": PASSWD, "tasks": "arc_easy"},
                 "/api/predict": {"run": "runs/quickstart", "data": PASSWD},
                 "/api/export": {"run": "runs/quickstart", "kind": "merge", "out": PASSWD},
                 "/api/chat": {"run": PASSWD, "messages": [{"role": "user", "content": "hi"}]}}
        for url in gets:
            r = client.get(url)
            assert r.status_code == 400 and "outside the workspace" in r.json()["error"]["message"], (url, r.text)
        for url, body in posts.items():
            r = client.post(url, json=body)
            assert r.status_code == 400 and "outside the workspace" in r.json()["error"]["message"], (url, r.text)
        assert client.get("/static/..%2F..%2F..%2Fetc%2Fpasswd").status_code == 404
        assert "root:" not in client.get("/static/../../../../etc/passwd").text
        # An upload's name is a name, never a path; the files an uploaded config names stay inside.
        r = client.post("/api/import", json={"tool": "axolotl", "filename": PASSWD, "text": "base_model: x\n"})
        assert r.status_code in (200, 400) and r.json().get("path", "passwd.yaml") == "passwd.yaml"
        for tool, key in (("llamafactory", "dataset_dir"), ("axolotl", "deepspeed")):
            r = client.post("/api/import", json={"tool": tool, "filename": "x.yaml",
                                                 "text": f"model_name_or_path: x\n{key}: ../../etc\n"})
            assert r.status_code == 400 and "outside the workspace" in r.json()["error"]["message"], r.text
        # Cross-site protection: no CSRF header, a foreign Origin, a foreign Host.
        assert client.post("/api/save", json={"path": "x.yaml", "text": "a: 1"}, headers={"X-Runner-CSRF": ""}).status_code == 403
        assert client.post("/api/save", json={"path": "x.yaml", "text": "a: 1"},
                           headers={"Origin": "http://evil.example"}).status_code == 403
        assert client.get("/api/runs", headers={"Host": "evil.example"}).status_code == 403
