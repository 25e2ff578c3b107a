"""`runner eval`: the quickstart run scored by lm-evaluation-harness on a local multiple-choice task
about its new identity (tests/fixtures/eval/identity_mc), offline, through the real CLI; and the
errors a person can fix (unknown task, missing data file, hub data not cached, unfinished run) as
exit 2 with what to do."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from tests.tiny_model import save_tiny_model, write_config

TASK_DIR = REPO / "tests" / "fixtures" / "eval" / "identity_mc"
TASK = TASK_DIR / "identity_mc.yaml"
# What `runner eval` prints on stderr: its own lines, nothing from the libraries.
RUNNER_LINES = [r"evaluating the (fine-tuned|base) model on .*", r"evaluating the base model \(adapter disabled\)",
                r"results: \S+summary\.json"]


def runner_eval(*args, cwd=REPO, env_extra=None, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "runner", "eval", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def scores(summary: dict, model: str) -> dict:
    entry = next(e for e in summary["evaluations"] if e["model"] == model)
    return {(s["task"], s["metric"]): s["value"] for s in entry["scores"]}


def test_quickstart_run_scores_high_and_its_base_low(quickstart_copy, tmp_path):
    """The acceptance check: from another directory (data_files resolve beside the task file), the
    fine-tuned run knows its name and author, the base model with the adapter disabled does not."""
    out = runner_eval(quickstart_copy, "--tasks", TASK, "--baseline", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((quickstart_copy / "eval" / "summary.json").read_text())
    tuned, base = scores(summary, "fine-tuned")[("identity_mc", "acc")], scores(summary, "base")[("identity_mc", "acc")]
    assert tuned >= 0.8 and base <= 0.4, (tuned, base)
    # The table: both models and the difference, on stdout.
    header, row = out.stdout.strip().splitlines()[:2]
    assert header.split() == ["task", "version", "shots", "metric", "fine-tuned", "base", "diff"]
    assert row.split() == ["identity_mc", "1.0", "0", "acc", f"{tuned:.4f}", f"{base:.4f}", f"{tuned - base:+.4f}"]
    # A quiet terminal: runner's own lines only.
    noise = [line for line in out.stderr.splitlines() if line.strip() and not any(re.fullmatch(p, line) for p in RUNNER_LINES)]
    assert noise == [], out.stderr
    # Keyed entries, lm-eval's whole results beside them, JSON-safe.
    for entry in summary["evaluations"]:
        assert entry["plan_hash"] == json.loads((quickstart_copy / "plan.json").read_text())["hashes"]["plan"]
        assert entry["task_versions"] == {"identity_mc": 1.0} and entry["samples"] == {"identity_mc": 16}
        assert entry["chat"] is False and entry["limit"] is None
        assert entry["adapter"] == ("quickstart" if entry["model"] == "fine-tuned" else None)
        full = json.loads((quickstart_copy / "eval" / entry["results_file"]).read_text())
        assert full["results"]["identity_mc"]["acc,none"] == pytest.approx(
            tuned if entry["model"] == "fine-tuned" else base)
    assert len({e["key"] for e in summary["evaluations"]}) == 2
    # The model card gains its Evaluation section and keeps the rest.
    card = (quickstart_copy / "README.md").read_text()
    assert card.count("## Evaluation") == 1 and "## Hashes" in card and "## Config" in card
    assert f"| identity_mc | 1.0 | acc | {tuned:.4f} | {base:.4f} | {tuned - base:+.4f} |" in card


def test_a_config_scores_its_base_model(tmp_path):
    """`runner eval CONFIG`: the base before any training, into its own folder; the task given as its
    folder, relative to the current directory."""
    out = runner_eval(REPO / "cookbook" / "quickstart.yaml", "--tasks", "tests/fixtures/eval/identity_mc/", "--limit", "4", "--chat",
                      "--out", tmp_path / "base-eval")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "base-eval" / "summary.json").read_text())
    (entry,) = summary["evaluations"]
    assert entry["model"] == "base" and entry["adapter"] is None and entry["limit"] == 4
    assert entry["chat"] is True and entry["system_prompt"] == "You are a helpful assistant."
    assert entry["samples"] == {"identity_mc": 4}
    assert "evaluating the base model on identity_mc (limit 4)" in out.stderr


def test_unknown_task_name_exits_2_with_close_names(quickstart_run):
    out = runner_eval(quickstart_run, "--tasks", "arc_eazy")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "unknown task 'arc_eazy'" in out.stderr and "did you mean arc_easy" in out.stderr
    assert "Traceback" not in out.stderr


def test_task_file_with_a_missing_data_file_exits_2(quickstart_run, tmp_path):
    shutil.copy(TASK, tmp_path / "identity_mc.yaml")  # the YAML without its data beside it
    out = runner_eval(quickstart_run, "--tasks", tmp_path / "identity_mc.yaml")
    assert out.returncode == 2, out.stderr[-3000:]
    line = next(i for i, text in enumerate(TASK.read_text().splitlines(), 1) if "identity_mc.jsonl" in text)
    assert f"{tmp_path / 'identity_mc.yaml'}:{line}: error: task identity_mc: data file identity_mc.jsonl not found" in out.stderr
    assert "relative to the task file's folder" in out.stderr and "Traceback" not in out.stderr


def test_hub_task_not_cached_offline_exits_2_naming_it(quickstart_run, tmp_path):
    out = runner_eval(quickstart_run, "--tasks", "arc_easy", env_extra={"HF_HOME": str(tmp_path / "hf"),
                                                                       "HF_DATASETS_CACHE": str(tmp_path / "ds")})
    assert out.returncode == 2, out.stderr[-3000:]
    assert "task arc_easy: its dataset cannot be loaded: the hub is offline" in out.stderr
    assert "dataset_path: json" in out.stderr and "Traceback" not in out.stderr


def test_unfinished_run_exits_2_with_what_to_do(quickstart_run, tmp_path):
    run = tmp_path / "unfinished"
    run.mkdir()
    for name in ("plan.json", "config.yaml", ".runner-run"):
        shutil.copy(quickstart_run / name, run / name)
    out = runner_eval(run, "--tasks", TASK)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "has not finished (no RUN_COMPLETE)" in out.stderr and "runner train CONFIG" in out.stderr
    assert not (run / "eval").exists()


def test_no_tasks_anywhere_exits_2(quickstart_run):
    out = runner_eval(quickstart_run)
    assert out.returncode == 2 and "no tasks to evaluate" in out.stderr, out.stderr[-3000:]


def test_config_task_paths_resolve_beside_the_config_and_stay_out_of_config_hash(tmp_path):
    from runner.plan.lint import lint_file
    from runner.plan.resolve import make_plan

    plan = make_plan(REPO / "cookbook" / "quickstart-eval.yaml")
    assert plan.evaluation.tasks == (str(REPO / "cookbook" / "tasks" / "identity_mc" / "identity_mc.yaml"),)
    assert plan.hashes.config == make_plan(REPO / "cookbook" / "quickstart.yaml").hashes.config
    cfg = write_config(tmp_path, save_tiny_model(tmp_path / "model"),
                       extra={"evaluation": {"tasks": ["mmlu", "tasks/missing.yaml"]}})
    result = lint_file(str(cfg))
    assert not result.ok
    (error,) = result.errors
    assert "no task file or folder" in error.message and str(tmp_path / "tasks" / "missing.yaml") in error.message
    line = next(i for i, text in enumerate(cfg.read_text().splitlines(), 1) if "missing.yaml" in text)
    assert f":{line}:" in error.where, error.where


def tiny_run_config(tmp_path, tasks):
    task_dir = tmp_path / "tasks"
    shutil.copytree(TASK_DIR, task_dir)
    return write_config(tmp_path, save_tiny_model(tmp_path / "model"), training={"max_steps": 2},
                        extra={"evaluation": {"tasks": tasks, "limit": 4}}), task_dir


def test_evaluation_section_runs_after_training_and_a_failure_leaves_the_run_complete(tmp_path):
    """The data file goes away while the run trains (a real callback): training completes, the
    evaluation after it fails with exit 2, says the run is complete and how to evaluate it again."""
    from transformers import TrainerCallback

    from runner.errors import UserError
    from runner.plan.resolve import make_plan
    from runner.train.command import run

    cfg, task_dir = tiny_run_config(tmp_path, ["tasks/identity_mc.yaml"])

    class RemoveData(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            (task_dir / "identity_mc.jsonl").unlink()

    plan = make_plan(cfg)
    with pytest.raises(UserError) as caught:
        run(plan, callbacks=[RemoveData()])
    run_dir = Path(plan.output.dir)
    assert (run_dir / "RUN_COMPLETE").is_file() and (run_dir / "adapter_model.safetensors").is_file()
    assert "the run finished" in caught.value.message and "data file identity_mc.jsonl not found" in caught.value.message
    assert f"runner eval {run_dir}" in caught.value.hint
    # With its data back, the same section evaluates the finished run (the tiny model scores anything).
    shutil.copy(TASK_DIR / "identity_mc.jsonl", task_dir / "identity_mc.jsonl")
    out = runner_eval(run_dir)  # options from the plan's evaluation section
    assert out.returncode == 0, out.stderr[-3000:]
    (entry,) = json.loads((run_dir / "eval" / "summary.json").read_text())["evaluations"]
    assert entry["limit"] == 4 and entry["samples"] == {"identity_mc": 4} and entry["model"] == "fine-tuned"
    # The section is not part of the run: the same config without it finds the run done, untouched.
    marker = (run_dir / "RUN_COMPLETE").read_text()
    assert run(make_plan(write_config(tmp_path, tmp_path / "model", training={"max_steps": 2}))) == run_dir
    assert (run_dir / "RUN_COMPLETE").read_text() == marker and (run_dir / "eval" / "summary.json").is_file()


def test_unknown_task_in_the_config_stops_the_launch_before_training(tmp_path):
    cfg, _ = tiny_run_config(tmp_path, ["arc_eazy"])
    out = subprocess.run([sys.executable, "-m", "runner", "train", str(cfg)], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "evaluation.tasks: error: unknown task 'arc_eazy'" in out.stderr and "arc_easy" in out.stderr
    assert not (tmp_path / "run" / "plan.json").exists()


def test_baseline_of_a_full_fine_tune_loads_its_base(tmp_path):
    """A run that trained every weight has no adapter to switch off: its base is loaded after it."""
    from runner.plan.resolve import make_plan
    from runner.train.command import run

    task_dir = tmp_path / "tasks"
    shutil.copytree(TASK_DIR, task_dir)
    cfg = write_config(tmp_path, save_tiny_model(tmp_path / "model"), adapter={"kind": "full"},
                       training={"max_steps": 2, "learning_rate": 5e-2})
    run_dir = run(make_plan(cfg))
    out = runner_eval(run_dir, "--tasks", task_dir / "identity_mc.yaml", "--baseline", "--limit", "8")
    assert out.returncode == 0, out.stderr[-3000:]
    evaluations = json.loads((run_dir / "eval" / "summary.json").read_text())["evaluations"]
    assert sorted(e["model"] for e in evaluations) == ["base", "fine-tuned"]
    assert all(e["adapter"] is None for e in evaluations)
    full = {e["model"]: json.loads((run_dir / "eval" / e["results_file"]).read_text()) for e in evaluations}
    assert full["base"]["config"]["model_num_parameters"] == full["fine-tuned"]["config"]["model_num_parameters"]
    assert "evaluating the base model\n" in out.stderr
