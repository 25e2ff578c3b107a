"""`runner import`: output file or stdout, the report on stderr, exit codes, and the cases where the
result cannot lint clean (the importer must say why)."""

from pathlib import Path

import pytest
import yaml

from runner.cli import main
from runner.importers import import_config
from runner.plan.lint import lint_files

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")


@needs_data
def test_cli_writes_output_and_reports_on_stderr(tmp_path, capsys):
    out = tmp_path / "sub" / "imported.yaml"
    code = main(["import", "axolotl", str(FIXTURES / "axolotl" / "lora_llama3_alpaca.yml"), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out == ""
    assert "Not mapped (5 keys):" in captured.err and "evals_per_epoch: 4  -- give training.eval_every" in captured.err
    text = out.read_text()
    assert text.startswith("# Imported from the axolotl config")
    config = yaml.safe_load(text)
    # Paths are rewritten relative to the output file's folder and still point at the same file.
    assert (out.parent / config["datasets"][0]["path"]).resolve() == (SHARED_DATA / "alpaca_en_demo.json").resolve()
    assert lint_files([out])[0].errors == []
    assert main(["import", "axolotl", str(FIXTURES / "axolotl" / "lora_llama3_alpaca.yml"), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["import", "axolotl", str(FIXTURES / "axolotl" / "lora_llama3_alpaca.yml"), "-o", str(out),
                 "--force"]) == 0


@needs_data
def test_cli_prints_config_to_stdout(capsys, monkeypatch):
    monkeypatch.chdir(FIXTURES / "llamafactory")
    code = main(["import", "llamafactory", "llama3_lora_kto.yaml", "--dataset-info", "dataset_info.json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    config = yaml.safe_load(captured.out)
    assert config["training"]["stage"] == "kto" and config["datasets"][0]["format"] == "kto"
    assert "Not mapped: none" in captured.err


def test_result_that_cannot_lint_says_why(tmp_path, capsys):
    source = tmp_path / "broken.yml"
    source.write_text("base_model: org/model\nadapter: lora\ndatasets:\n  - path: ./missing/train.jsonl\n"
                      "    type: alpaca\nlearning_rate: 1e-4\n")
    code = main(["import", "axolotl", str(source), "-o", str(tmp_path / "out.yaml")])
    err = capsys.readouterr().err
    assert code == 1
    assert "does not lint clean" in err and "dataset file not found" in err
    assert (tmp_path / "out.yaml").is_file()  # what could be translated is still written


def test_llamafactory_without_dataset_descriptions_reports_each_name(tmp_path):
    source = tmp_path / "sft.yaml"
    source.write_text("model_name_or_path: org/model\nstage: sft\ndataset: mine,theirs\ntemplate: llama3\n")
    result = import_config("llamafactory", source, tmp_path)
    assert [u.value for u in result.translation.unmapped if u.key == "dataset"] == ["mine", "theirs"]
    assert any("datasets" in e and "required" in e for e in result.errors), result.errors


def test_llamafactory_token_is_never_copied(tmp_path):
    secret = "hf_abcdefghijklmnopqrstuvwxyz123456"
    source = tmp_path / "sft.yaml"
    source.write_text(f"model_name_or_path: org/model\nhf_hub_token: {secret}\ndataset: x\ndataset_dir: ONLINE\n")
    result = import_config("llamafactory", source, tmp_path)
    assert secret not in result.text
    assert "hf_hub_token" in [k for k, _ in result.translation.notes]


def test_dataset_info_option_only_for_llamafactory(capsys):
    code = main(["import", "axolotl", str(FIXTURES / "axolotl" / "kto_llama3.yml"), "--dataset-info", "x.json"])
    assert code == 2 and "--dataset-info" in capsys.readouterr().err


def test_missing_source_is_a_user_error(tmp_path, capsys):
    assert main(["import", "axolotl", str(tmp_path / "nope.yml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_chat_template_jinja_file_or_inline(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                         '{"role": "assistant", "content": "hello"}]}\n')
    (tmp_path / "tmpl.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    base = "base_model: org/model\ndatasets:\n  - path: data.jsonl\n    type: chat_template\n"
    source = tmp_path / "a.yml"
    source.write_text(base + "chat_template: jinja\nchat_template_jinja: tmpl.jinja\n")
    result = import_config("axolotl", source, tmp_path)
    config = yaml.safe_load(result.text)
    assert config["template"] == {"name": "jinja", "jinja": "tmpl.jinja"}
    assert result.errors == []
    source.write_text(base + "chat_template: jinja\nchat_template_jinja: \"{% for m in messages %}{{ m.content }}{% endfor %}\"\n")
    result = import_config("axolotl", source, tmp_path)
    assert "chat_template_jinja" in result.translation.unmapped_keys()
    assert any("jinja" in e for e in result.errors)  # name: jinja without a file cannot lint: said so


def test_switched_off_keys_are_listed_not_reported(tmp_path):
    source = tmp_path / "a.yml"
    source.write_text("base_model: org/model\nadapter:\nxformers_attention: false\nmade_up_key: false\n"
                      "datasets:\n  - path: org/data\n    type: alpaca\n")
    result = import_config("axolotl", source, tmp_path)
    assert "xformers_attention" in result.translation.idle
    assert "made_up_key" in result.translation.unmapped_keys()  # unknown keys are reported even when false
    assert "Empty or switched off in the source" in result.text


def test_source_defaults_that_change_the_run_are_written_out(tmp_path):
    axolotl = tmp_path / "a.yml"
    axolotl.write_text("base_model: org/model\nadapter: lora\ndatasets:\n  - path: org/data\n    type: alpaca\n")
    training = yaml.safe_load(import_config("axolotl", axolotl, tmp_path).text)["training"]
    assert (training["micro_batch_size"], training["gradient_accumulation"], training["optimizer"]) == (
        1, 1, "adamw_torch_fused")
    lf = tmp_path / "l.yaml"
    lf.write_text("model_name_or_path: org/model\ndataset: org/data\ndataset_dir: ONLINE\ntemplate: llama3\n")
    config = yaml.safe_load(import_config("llamafactory", lf, tmp_path).text)
    assert config["adapter"]["r"] == 8 and config["adapter"]["dropout"] == 0.0
    assert config["training"]["learning_rate"] == 5e-5 and config["training"]["epochs"] == 3.0
    assert config["training"]["precision"] == "fp32" and config["training"]["gradient_checkpointing"] is True


def test_unsloth_lora_kernels_become_fused_lora(tmp_path):
    source = tmp_path / "a.yml"
    source.write_text("base_model: org/model\nadapter: lora\nlora_r: 16\nlora_target_linear: true\n"
                      "unsloth_lora_mlp: true\nunsloth_lora_qkv: true\nunsloth_lora_o: false\n"
                      "datasets:\n  - path: org/data\n    type: alpaca\n")
    result = import_config("axolotl", source, tmp_path)
    config = yaml.safe_load(result.text)
    assert config["training"]["fused_lora"] is True
    assert not {"unsloth_lora_mlp", "unsloth_lora_qkv"} & set(result.translation.unmapped_keys())
    assert "unsloth_lora_o" in result.translation.idle


@pytest.mark.parametrize("tool, name, text", [
    ("axolotl", "ppo.yml", "base_model: meta-llama/Llama-3.2-1B-Instruct\nrl: ppo\nrl_beta: 0.05\n"
                           "datasets:\n  - path: prompts.jsonl\n    type: chat_template\n"),
    ("llamafactory", "ppo.yaml", "model_name_or_path: meta-llama/Llama-3.2-1B-Instruct\nstage: ppo\n"
                                 "reward_model: saves/rm\ndataset: alpaca_en_demo\ntemplate: llama3\n"),
])
def test_ppo_is_refused_with_the_reason_and_what_to_use_instead(tmp_path, capsys, tool, name, text):
    source = tmp_path / name
    source.write_text(text)
    out = tmp_path / "imported.yaml"
    assert main(["import", tool, str(source), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "runner does not train PPO" in err and "value model" in err  # the reason
    assert "training.stage: grpo" in err and "dpo" in err  # what to use instead
    assert str(source) in err and "Traceback" not in err
    assert not out.exists()
