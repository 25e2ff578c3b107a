"""The peers' FP8, row-splitting (context / sequence parallelism) and packing keys: the branches the
fixtures in tests/fixtures/{axolotl,llamafactory} do not reach. Each import is checked the way
`runner lint` checks a config; where runner cannot run the request, the result says so in runner's words."""

from pathlib import Path

import pytest
import yaml

from runner.cli import main
from runner.importers import import_config

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
INFO = Path(__file__).parent / "fixtures" / "llamafactory" / "dataset_info.json"
pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")

AXOLOTL = f"""base_model: meta-llama/Llama-3.1-8B-Instruct
chat_template: llama3
datasets:
  - path: {SHARED_DATA / 'alpaca_en_demo.json'}
    type: alpaca
sequence_len: 8192
micro_batch_size: 1
gradient_accumulation_steps: 4
num_epochs: 1
learning_rate: 2e-5
bf16: true
"""
LLAMAFACTORY = f"""model_name_or_path: Qwen/Qwen2.5-7B-Instruct
stage: sft
do_train: true
finetuning_type: full
dataset: alpaca_en_demo
dataset_dir: {SHARED_DATA}
template: qwen
cutoff_len: 32768
per_device_train_batch_size: 1
bf16: true
"""


def run_import(tmp_path: Path, tool: str, text: str):
    source = tmp_path / "source.yaml"
    source.write_text(text)
    result = import_config(tool, source, tmp_path, INFO if tool == "llamafactory" else None)
    return result, yaml.safe_load(result.text), {u.key: u.reason for u in result.translation.unmapped}


def test_axolotl_context_parallel_without_a_backend_runs_under_fsdp(tmp_path):
    result, config, unmapped = run_import(tmp_path, "axolotl", AXOLOTL + "context_parallel_size: 2\n"
                                          "flash_attention: true\nring_attn_func: batch_ring\n")
    assert result.errors == []
    assert config["distributed"] == {"backend": "fsdp", "context_parallel": 2}
    assert config["model"]["attn_implementation"] == "sdpa"
    assert "ring-flash-attn" in unmapped["ring_attn_func"]
    notes = dict(result.translation.notes)
    assert "source named no backend" in notes["distributed.backend"]


def test_axolotl_split_refused_for_a_preference_stage(tmp_path):
    text = AXOLOTL.replace("    type: alpaca\n", "    type: chatml.intel\n") + "rl: dpo\ncontext_parallel_size: 4\n"
    source = tmp_path / "source.yaml"
    source.write_text(text.replace(str(SHARED_DATA / "alpaca_en_demo.json"), str(SHARED_DATA / "dpo_en_demo.json")))
    result = import_config("axolotl", source, tmp_path)
    config = yaml.safe_load(result.text)
    unmapped = {u.key: u.reason for u in result.translation.unmapped}
    assert "stage dpo scores whole sequences" in unmapped["context_parallel_size"]
    assert "context_parallel" not in config.get("distributed", {})


def test_axolotl_both_names_and_mesh_sizes(tmp_path):
    result, config, unmapped = run_import(
        tmp_path, "axolotl", AXOLOTL + "context_parallel_size: 4\nsequence_parallel_degree: 2\n"
        "dp_replicate_size: 2\nexpert_parallel_size: 1\ntensor_parallel_size: 2\nfsdp_version: 2\n"
        "fsdp_config:\n  reshard_after_forward: true\n")
    assert config["distributed"]["context_parallel"] == 4
    assert "context_parallel_size is also set and wins" in unmapped["sequence_parallel_degree"]
    assert unmapped["dp_replicate_size"].startswith("no HSDP")
    assert unmapped["tensor_parallel_size"] == "no tensor parallelism"
    assert "expert_parallel_size" in result.translation.idle and "expert_parallel_size" not in unmapped


def test_row_length_the_split_cannot_cut_fails_lint_with_runners_error(tmp_path, capsys):
    source = tmp_path / "source.yaml"
    source.write_text(AXOLOTL.replace("sequence_len: 8192", "sequence_len: 8190") + "context_parallel_size: 2\n")
    code = main(["import", "axolotl", str(source), "-o", str(tmp_path / "out.yaml")])
    err = capsys.readouterr().err
    assert code == 1
    assert "8190 is not divisible by 4 (2 x context_parallel)" in err and "8192" in err
    assert yaml.safe_load((tmp_path / "out.yaml").read_text())["distributed"]["context_parallel"] == 2


def test_axolotl_fp8_refused_with_qlora_keeps_bf16(tmp_path):
    result, config, unmapped = run_import(tmp_path, "axolotl", AXOLOTL + "adapter: qlora\nload_in_4bit: true\n"
                                          "lora_r: 16\nlora_target_linear: true\nfp8: true\n")
    assert result.errors == []
    assert config["training"]["precision"] == "bf16"
    assert "4-bit base" in unmapped["fp8"] and unmapped["fp8"].endswith("the run keeps precision bf16")


def test_axolotl_fp8_full_fine_tune(tmp_path):
    result, config, unmapped = run_import(tmp_path, "axolotl", AXOLOTL + "fp8: true\ntorch_compile: true\n")
    assert result.errors == [] and unmapped == {}
    assert config["training"]["precision"] == "fp8" and config["adapter"]["kind"] == "full"
    assert "torchao" in dict(result.translation.notes)["fp8"]


def test_llamafactory_all_gather_alone_turns_fp8_on(tmp_path):
    result, config, unmapped = run_import(tmp_path, "llamafactory", LLAMAFACTORY
                                          + "fp8_enable_fsdp_float8_all_gather: true\nfp8_backend: te\n")
    assert result.errors == []
    assert config["training"]["precision"] == "fp8"
    assert "turns fp8 on" in dict(result.translation.notes)["fp8_enable_fsdp_float8_all_gather"]
    assert "does not run under FSDP" in unmapped["fp8_enable_fsdp_float8_all_gather"]
    assert "Transformer Engine" in unmapped["fp8_backend"]


def test_llamafactory_fp8_off_leaves_its_settings_idle(tmp_path):
    result, config, unmapped = run_import(tmp_path, "llamafactory", LLAMAFACTORY
                                          + "fp8: false\nfp8_backend: auto\nfp8_enable_fsdp_float8_all_gather: false\n")
    assert config["training"]["precision"] == "bf16" and unmapped == {}
    assert {"fp8", "fp8_backend", "fp8_enable_fsdp_float8_all_gather"} <= set(result.translation.idle)


def test_360_llamafactory_zigzag_ring_runs_as_context_parallel(tmp_path):
    # The fork's default mode (zigzag-ring) is ring attention: runner's context parallelism under FSDP.
    result, config, unmapped = run_import(tmp_path, "llamafactory", LLAMAFACTORY
                                          + "sequence_parallel_size: 8\nflash_attn: fa2\nneat_packing: true\n")
    assert result.errors == []
    assert config["distributed"] == {"backend": "fsdp", "context_parallel": 8}
    assert config["model"]["attn_implementation"] == "sdpa"
    assert config["sequence"]["packing"] is False and "ring attention" in unmapped["neat_packing"]


def test_360_llamafactory_ulysses_without_backend_and_sdpa_packing(tmp_path):
    result, config, unmapped = run_import(tmp_path, "llamafactory", LLAMAFACTORY
                                          + "sequence_parallel_size: 2\nsequence_parallel_mode: ulysses\n"
                                            "flash_attn: sdpa\npacking: true\n")
    assert config["distributed"]["backend"] == "deepspeed" and config["distributed"]["sequence_parallel"] == 2
    # sdpa would let a packed row's samples attend to each other under Ulysses.
    assert "with sdpa a packed row attends as one sample" in unmapped["packing"]
    assert config["sequence"]["packing"] is False


def test_360_llamafactory_unknown_mode_and_size_one(tmp_path):
    result, config, unmapped = run_import(tmp_path, "llamafactory", LLAMAFACTORY
                                          + "sequence_parallel_size: 2\nsequence_parallel_mode: striped\n")
    assert "read as zigzag-ring" in unmapped["sequence_parallel_mode"]
    assert config["distributed"]["context_parallel"] == 2
    (tmp_path / "one").mkdir()
    result, config, unmapped = run_import(tmp_path / "one", "llamafactory", LLAMAFACTORY
                                          + "sequence_parallel_size: 1\nsequence_parallel_mode: ulysses\n")
    assert unmapped == {} and "distributed" not in config
    assert {"sequence_parallel_size", "sequence_parallel_mode"} <= set(result.translation.idle)


def test_vision_family_read_from_a_local_model_config(tmp_path):
    """A local model folder's config.json decides the family, whatever its name says."""
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gemma3", "vision_config": {}, "text_config": {}}')
    text = LLAMAFACTORY.replace("Qwen/Qwen2.5-7B-Instruct", str(model)).replace("alpaca_en_demo", "mllm_demo")
    result, config, unmapped = run_import(tmp_path, "llamafactory", text + "neat_packing: true\n")
    assert "not supported for Gemma 3 models" in unmapped["neat_packing"]
    assert config["sequence"]["packing"] is False
