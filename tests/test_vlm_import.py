"""Importers carry multimodal settings over: LLaMA-Factory's dataset_info entries with images /
videos columns and its image / video / freeze keys; Axolotl's processor_type and image_size. The
imported config lints and its rows read with their images."""

import json
import shutil

import yaml

from runner.data.readers import load_rows
from runner.importers import import_config
from tests.tiny_model import SHARED_DATA

LF_INFO = {"mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                         "columns": {"messages": "messages", "images": "images"},
                         "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                  "assistant_tag": "assistant"}},
           "renamed": {"file_name": "renamed.json", "formatting": "sharegpt",
                       "columns": {"messages": "conversations", "images": "pictures", "audios": "sounds"}}}


def test_llamafactory_multimodal_config_and_dataset_info(tmp_path):
    shutil.copy(SHARED_DATA / "mllm_demo.json", tmp_path / "mllm_demo.json")
    shutil.copytree(SHARED_DATA / "mllm_demo_data", tmp_path / "mllm_demo_data")
    rows = [{"conversations": [{"from": "human", "value": "<image>Who?"}, {"from": "gpt", "value": "Him."}],
             "pictures": ["mllm_demo_data/2.jpg"]}]
    (tmp_path / "renamed.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps(LF_INFO))
    source = tmp_path / "qwen2_5vl_lora_sft.yaml"
    source.write_text(yaml.safe_dump({
        "model_name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct", "image_max_pixels": 262144, "image_min_pixels": 1024,
        "video_fps": 1.0, "video_maxlen": 16, "freeze_vision_tower": False, "freeze_multi_modal_projector": False,
        "stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_target": "all",
        "dataset": "mllm_demo,renamed", "dataset_dir": str(tmp_path), "template": "qwen2_vl", "cutoff_len": 2048,
        "output_dir": "saves/qwen2_5vl", "per_device_train_batch_size": 1, "learning_rate": 1.0e-4}))
    result = import_config("llamafactory", source, tmp_path)
    config = yaml.safe_load(result.text)
    assert config["vision"] == {"max_pixels": 262144, "min_pixels": 1024, "video_fps": 1.0, "video_max_frames": 16,
                                "tower": "lora", "projector": "full"}
    first, second = config["datasets"]
    assert "columns" not in first or "images" not in first["columns"]  # the default name needs no mapping
    assert second["columns"]["images"] == "pictures"
    skipped = {u.key: u.reason for u in result.translation.unmapped}
    assert any(k.endswith("columns.audios") and "not audio" in r for k, r in skipped.items())
    assert not any("images" in k or "image_max_pixels" in k or "freeze_vision" in k for k in skipped), skipped
    rows = load_rows({**second, "path": str(tmp_path / second["path"])}).rows
    assert rows[0]["images"] == [str(tmp_path / "mllm_demo_data/2.jpg")]
    assert len(load_rows({**first, "path": str(tmp_path / first["path"])}).rows[0]["images"]) == 2


def test_axolotl_multimodal_keys(tmp_path):
    source = tmp_path / "qwen2_5vl.yml"
    source.write_text(yaml.safe_dump({
        "base_model": "Qwen/Qwen2.5-VL-7B-Instruct", "processor_type": "AutoProcessor", "image_size": 512,
        "image_resize_algorithm": "bilinear", "skip_prepare_dataset": True, "remove_unused_columns": False,
        "sample_packing": False, "chat_template": "qwen2_vl", "adapter": "lora", "lora_r": 16,
        "datasets": [{"path": str(SHARED_DATA / "mllm_demo.json"), "type": "chat_template"}],
        "sequence_len": 2048, "micro_batch_size": 1, "num_epochs": 1, "learning_rate": 2e-4}))
    result = import_config("axolotl", source, tmp_path)
    config = yaml.safe_load(result.text)
    assert config["vision"]["max_pixels"] == 512 * 512
    notes = dict(result.translation.notes)
    assert "AutoProcessor" in notes["processor_type"] and "aspect kept" in notes["image_size"]
    assert "bicubic" in {u.key: u.reason for u in result.translation.unmapped}["image_resize_algorithm"]
