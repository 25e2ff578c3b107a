"""Composition of a config: `extends:` bases (deep-merged in order, relative to the including file) and
dotted command-line overrides typed by the schema (`training.learning_rate=1e-4` is a number)."""

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
from runner.errors import UserError
from runner.plan.resolve import make_plan

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CONFIGS = FIXTURES / "configs"
REPO = Path(__file__).resolve().parents[1]


def run_main(capsys, *args) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- overrides ----------------------------------------------------------------------------------------


def test_overrides_are_typed_by_the_schema():
    plan = make_plan(CONFIGS / "lora.yaml", ["training.learning_rate=1e-4", "datasets.0.num_samples=100",
                                             "model.trust_remote_code=false", "adapter.dropout=0"])
    lr, n = plan.training.learning_rate, plan.data.datasets[0].num_samples
    assert isinstance(lr, float) and lr == pytest.approx(1e-4)
    assert isinstance(n, int) and not isinstance(n, bool) and n == 100
    assert plan.model.trust_remote_code is False
    assert plan.adapter.dropout == 0


def test_string_keys_keep_the_text_as_written():
    plan = make_plan(CONFIGS / "wandb.yaml", ["tracking.wandb.project=on", "tracking.wandb.name=007",
                                              "name=1e3"])
    assert plan.tracking.wandb.project == "on"
    assert plan.tracking.wandb.name == "007"
    assert plan.name == "1e3"


def test_override_can_set_a_key_of_a_section_the_file_omits():
    plan = make_plan(CONFIGS / "minimal.yaml", ["sequence.max_length=128", "training.stage=pt"])
    assert plan.data.sequence.max_length == 128
    assert plan.data.stage == "pt" and plan.training.stage == "pt"


def test_overrides_win_over_the_file_and_its_bases():
    plan = make_plan(CONFIGS / "extends_list.yaml", ["training.learning_rate=5e-5", "adapter.r=2"])
    assert plan.training.learning_rate == pytest.approx(5e-5)
    assert plan.adapter.r == 2 and plan.adapter.alpha == 4


def test_override_gives_the_same_plan_as_editing_the_file(tmp_path):
    shutil.copytree(CONFIGS, tmp_path / "c", ignore=shutil.ignore_patterns("*.gguf", ".runner_cache"))
    edited = tmp_path / "c" / "lora.yaml"
    edited.write_text(edited.read_text().replace("learning_rate: 2e-4", "learning_rate: 1e-4"))
    by_override = make_plan(CONFIGS / "lora.yaml", ["training.learning_rate=1e-4"])
    by_edit = make_plan(edited)
    three = ("config", "data", "plan")
    assert [getattr(by_override.hashes, k) for k in three] == [getattr(by_edit.hashes, k) for k in three]
    assert by_override.hashes.config != make_plan(CONFIGS / "lora.yaml").hashes.config


@pytest.mark.parametrize("override, must_contain", [
    ("training.learning_rate=abc", ["training.learning_rate", "number"]),
    ("training.nosuchkey=1", ["training.nosuchkey"]),
    ("training.stage=sfy", ["training.stage", "sft"]),
    ("adapter.r=0", ["adapter.r"]),
    ("datasets.7.num_samples=1", ["datasets"]),
    ("training.learning_rate", ["training.learning_rate"]),
])
def test_bad_override_is_a_user_error(capsys, override, must_contain):
    code, out, err = run_main(capsys, "plan", CONFIGS / "lora.yaml", override)
    text = out + err
    assert code == 2, text
    assert "Traceback" not in text
    for s in must_contain:
        assert s in text, (s, text)


def test_bad_override_raises_user_error_from_make_plan():
    with pytest.raises(UserError) as info:
        make_plan(CONFIGS / "lora.yaml", ["training.nosuchkey=1"])
    assert "nosuchkey" in str(info.value)


def test_cli_plan_with_overrides_prints_json_with_hashes():
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "plan", str(CONFIGS / "lora.yaml"), "training.learning_rate=1e-4",
         "datasets.0.num_samples=100", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["training"]["learning_rate"] == pytest.approx(1e-4)
    assert plan["data"]["datasets"][0]["num_samples"] == 100
    assert all(isinstance(plan["hashes"][k], str) and plan["hashes"][k] for k in ("config", "data", "plan"))


def test_plan_prints_readably_and_json_roundtrips(capsys):
    code, out, _ = run_main(capsys, "plan", CONFIGS / "lora.yaml")
    assert code == 0
    assert "learning_rate" in out and make_plan(CONFIGS / "lora.yaml").hashes.plan[:12] in out
    code, out, _ = run_main(capsys, "plan", "--json", CONFIGS / "lora.yaml")
    assert code == 0
    data = json.loads(out)
    from runner.plan.resolve import Plan
    assert Plan.from_dict(data).to_dict() == data


# --- extends ------------------------------------------------------------------------------------------


def test_extends_one_base_child_wins():
    plan = make_plan(CONFIGS / "extends_one.yaml")
    assert plan.training.epochs == 1  # the child's
    assert plan.training.learning_rate == pytest.approx(1e-4)  # the base's
    assert plan.training.micro_batch_size == 4
    assert plan.data.sequence.max_length == 256


def test_extends_list_merges_in_order_and_bases_resolve_relative_to_their_own_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing may depend on the working directory
    plan = make_plan(CONFIGS / "extends_list.yaml")
    # base/training.yaml < base/lora16.yaml (itself extending training.yaml by a path relative to base/) < file
    assert plan.training.learning_rate == pytest.approx(3e-4)
    assert plan.training.epochs == 3
    assert plan.adapter.r == 8 and plan.adapter.dropout == 0.0
    assert plan.data.sequence.max_length == 256


def test_extends_with_the_same_content_gives_the_same_hashes_as_one_flat_file(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text(textwrap.dedent(f"""\
        model: {{path: {CONFIGS / 'tiny-model'}}}
        datasets:
          - {{path: {CONFIGS / 'data' / 'alpaca_small.json'}}}
        adapter: {{kind: lora, r: 8, dropout: 0.0}}
        training: {{epochs: 3, learning_rate: 3e-4, micro_batch_size: 4}}
        sequence: {{max_length: 256}}
        """))
    composed = make_plan(CONFIGS / "extends_list.yaml").hashes
    flat_hashes = make_plan(flat).hashes
    assert (flat_hashes.config, flat_hashes.data) == (composed.config, composed.data)


def test_extends_replaces_lists_instead_of_appending(tmp_path):
    (tmp_path / "base.yaml").write_text(textwrap.dedent(f"""\
        model: {{path: {CONFIGS / 'tiny-model'}}}
        datasets:
          - {{path: {CONFIGS / 'data' / 'alpaca_small.json'}}}
        adapter: {{target_modules: [q_proj, k_proj]}}
        """))
    (tmp_path / "child.yaml").write_text(textwrap.dedent(f"""\
        extends: base.yaml
        datasets:
          - {{path: {CONFIGS / 'data' / 'sharegpt_small.jsonl'}, format: sharegpt}}
        adapter: {{target_modules: [v_proj]}}
        """))
    plan = make_plan(tmp_path / "child.yaml")
    assert [Path(d.path).name for d in plan.data.datasets] == ["sharegpt_small.jsonl"]
    assert plan.adapter.target_modules == ("v_proj",)


def test_extends_cycle_is_an_error_naming_both_files(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(UserError) as info:
        make_plan(tmp_path / "a.yaml")
    text = str(info.value)
    assert "cycle" in text and "a.yaml" in text and "b.yaml" in text


def test_extends_missing_file_names_it(tmp_path):
    (tmp_path / "a.yaml").write_text("# base\nextends: [sub/missing_base.yaml]\n")
    with pytest.raises(UserError) as info:
        make_plan(tmp_path / "a.yaml")
    assert "missing_base.yaml" in str(info.value) and "a.yaml:2" in str(info.value)


def test_config_dir_is_absolute_and_paths_resolve_from_it(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    plan = make_plan(os.path.relpath(CONFIGS / "minimal.yaml", tmp_path))
    assert plan.config_dir == str(CONFIGS)
    assert plan.data.datasets[0].path == str(CONFIGS / "data" / "alpaca_small.json")
    assert plan.model.path == str(CONFIGS / "tiny-model") and plan.model.source == "local"
