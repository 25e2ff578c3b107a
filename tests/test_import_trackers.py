"""Axolotl's and LLaMA-Factory's tracker settings become runner's tracking: section (TensorBoard,
MLflow, SwanLab); the result lints clean, and a SwanLab key is reported, never copied."""

from pathlib import Path

import pytest
import yaml

from runner.importers import import_config

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
KEY = "swanlabImportKey_1234567890"


def with_keys(tmp_path: Path, fixture: Path, **keys) -> Path:
    data = yaml.safe_load(fixture.read_text())
    data.update(keys)
    if "dataset_dir" in data:  # still the shared data, from the copy's folder
        data["dataset_dir"] = str((fixture.parent / data["dataset_dir"]).resolve())
    for ds in data.get("datasets") or []:
        ds["path"] = str((fixture.parent / ds["path"]).resolve())
    out = tmp_path / fixture.name
    out.write_text(yaml.safe_dump(data))
    return out


def test_llamafactory_report_to_and_swanlab_keys(tmp_path):
    source = with_keys(tmp_path, FIXTURES / "llamafactory" / "llama3_lora_sft.yaml",
                       report_to="tensorboard,mlflow", use_swanlab=True, swanlab_project="sft-runs",
                       swanlab_workspace="team", swanlab_run_name="first", swanlab_mode="local",
                       swanlab_api_key=KEY, swanlab_logdir="swanlog-here")
    result = import_config("llamafactory", source, tmp_path, FIXTURES / "llamafactory" / "dataset_info.json")
    assert result.errors == []
    tracking = yaml.safe_load(result.text)["tracking"]
    assert tracking["tensorboard"] is True and tracking["mlflow"] == {}
    assert tracking["swanlab"] == {"project": "sft-runs", "workspace": "team", "name": "first", "mode": "local"}
    unmapped = {u.key: u.reason for u in result.translation.unmapped}
    assert "SWANLAB_API_KEY" in unmapped["swanlab_api_key"] and "swanlog" in unmapped["swanlab_logdir"]
    assert KEY not in result.text and "report_to" not in unmapped


def test_llamafactory_swanlab_defaults_and_switched_off(tmp_path):
    on = with_keys(tmp_path, FIXTURES / "llamafactory" / "llama3_lora_sft.yaml", report_to="swanlab")
    result = import_config("llamafactory", on, tmp_path, FIXTURES / "llamafactory" / "dataset_info.json")
    # LLaMA-Factory's defaults: project "llamafactory", mode "cloud" (uploads as it trains).
    assert yaml.safe_load(result.text)["tracking"]["swanlab"] == {"project": "llamafactory", "mode": "online"}
    (tmp_path / "off").mkdir()
    off = with_keys(tmp_path / "off", FIXTURES / "llamafactory" / "llama3_lora_sft.yaml", use_swanlab=False,
                    swanlab_project="unused")
    result = import_config("llamafactory", off, tmp_path, FIXTURES / "llamafactory" / "dataset_info.json")
    assert "swanlab" not in yaml.safe_load(result.text).get("tracking", {})
    assert {u.key: u.reason for u in result.translation.unmapped}["swanlab_project"] == "use_swanlab is off"


def test_axolotl_tensorboard_and_mlflow_keys(tmp_path):
    source = with_keys(tmp_path, FIXTURES / "axolotl" / "lora_llama3_alpaca.yml", use_tensorboard=True,
                       mlflow_tracking_uri="http://127.0.0.1:5000", mlflow_experiment_name="exp",
                       mlflow_run_name="r1", hf_mlflow_log_artifacts=True)
    result = import_config("axolotl", source, tmp_path)
    assert result.errors == []
    tracking = yaml.safe_load(result.text)["tracking"]
    assert tracking["tensorboard"] is True
    assert tracking["mlflow"] == {"tracking_uri": "http://127.0.0.1:5000", "experiment": "exp", "run_name": "r1"}
    assert [u.key for u in result.translation.unmapped if "mlflow" in u.key] == ["hf_mlflow_log_artifacts"]


def test_axolotl_mlflow_names_without_a_uri_are_reported(tmp_path):
    source = with_keys(tmp_path, FIXTURES / "axolotl" / "lora_llama3_alpaca.yml", mlflow_experiment_name="exp")
    result = import_config("axolotl", source, tmp_path)
    assert "mlflow" not in yaml.safe_load(result.text).get("tracking", {})
    assert {u.key: u.reason for u in result.translation.unmapped}["mlflow_experiment_name"] == \
        "no mlflow_tracking_uri: MLflow is off"
