"""Images and videos in dataset rows: both layouts read into one form, paths relative to the data
file, media bytes in the data hash, file:row errors for missing or damaged media and for
placeholder counts that do not match; and the independent oracle: no image, video or prompt token
of any family's tokenized rows carries a label."""

import base64
import json
import shutil
from pathlib import Path

import pytest

from runner.data import media
from runner.data.readers import load_rows
from runner.errors import DataError, UserError
from tests.tiny_model import SHARED_DATA
from tests.tiny_vlm import FAMILIES, save_tiny_vlm, write_vlm_config

IMAGE_FAMILIES = list(FAMILIES)


def demo_copy(tmp_path, rows=None, name="data.json"):
    """mllm_demo.json and its images in a writable folder (or other rows beside the same images)."""
    shutil.copytree(SHARED_DATA / "mllm_demo_data", tmp_path / "mllm_demo_data")
    rows = rows if rows is not None else json.loads((SHARED_DATA / "mllm_demo.json").read_text())
    (tmp_path / name).write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    return tmp_path / name


def read(path, fmt="openai"):
    return load_rows({"path": str(path), "format": fmt})


def test_llamafactory_layout_paths_relative_to_the_data_file(tmp_path):
    path = demo_copy(tmp_path)
    loaded = read(path)
    assert len(loaded.rows) == 6
    first = loaded.rows[0]
    assert first["images"] == [str(tmp_path / "mllm_demo_data/1.jpg")] * 2
    assert first["messages"][0]["content"] == "<image>Who are they?"


def test_sharegpt_conversations_with_images(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "<image>What is this?"}, {"from": "gpt", "value": "A photo."}],
             "images": ["mllm_demo_data/2.jpg"]}]
    loaded = read(demo_copy(tmp_path, rows), "sharegpt")
    assert loaded.rows[0]["images"] == [str(tmp_path / "mllm_demo_data/2.jpg")]


def test_openai_content_parts_local_path_and_data_url(tmp_path):
    png = base64.b64encode((SHARED_DATA / "mllm_demo_data/3.jpg").read_bytes()).decode()
    rows = [{"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "mllm_demo_data/1.jpg"}},
                                     {"type": "text", "text": "Who?"},
                                     {"type": "image", "image": f"data:image/jpeg;base64,{png}"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Players."}]}]}]
    row = read(demo_copy(tmp_path, rows)).rows[0]
    assert row["messages"][0]["content"] == "<image>Who?<image>"
    assert row["messages"][1]["content"] == "Players."
    assert row["images"][0] == str(tmp_path / "mllm_demo_data/1.jpg")
    assert row["images"][1].startswith("data:image/jpeg;base64,")
    assert media.load_image(row["images"][1]).size == media.load_image(str(SHARED_DATA / "mllm_demo_data/3.jpg")).size


def test_video_rows(tmp_path):
    rows = json.loads((SHARED_DATA / "mllm_video_demo.json").read_text())
    row = read(demo_copy(tmp_path, rows)).rows[1]
    assert row["videos"] == [str(tmp_path / "mllm_demo_data/2.avi")] and "images" not in row


@pytest.mark.parametrize("change, message", [
    (lambda rows, d: rows[2].update(images=["mllm_demo_data/missing.jpg"]), "image 1 (mllm_demo_data/missing.jpg) does not exist"),
    (lambda rows, d: ((d / "mllm_demo_data/bad.jpg").write_bytes(b"\xff\xd8not a jpeg"),
                      rows[2].update(images=["mllm_demo_data/bad.jpg"])), "cannot be read as an image"),
    (lambda rows, d: rows[2]["images"].append("mllm_demo_data/2.jpg"), "1 <image> placeholder(s) but 2 images"),
])
def test_bad_media_is_an_error_naming_file_and_row(tmp_path, change, message):
    rows = json.loads((SHARED_DATA / "mllm_demo.json").read_text())
    path = demo_copy(tmp_path, rows)
    change(rows, tmp_path)
    path.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n")
    with pytest.raises(DataError) as err:
        read(path)
    print(str(err.value))
    assert message in str(err.value)
    assert f"{path}:4: " in str(err.value)  # row 3 is on line 4


def test_one_byte_of_one_image_changes_the_data_hash(tmp_path):
    from runner.plan.resolve import make_plan

    (tmp_path / "d").mkdir()
    data = demo_copy(tmp_path / "d")
    cfg = write_vlm_config(tmp_path, SHARED_DATA, name="h")  # model path: any folder; only the data matters here
    text = cfg.read_text().replace(str(SHARED_DATA / "mllm_demo.json"), str(data))
    cfg.write_text(text)
    before = make_plan(cfg, []).hashes.data
    assert make_plan(cfg, []).hashes.data == before
    image = tmp_path / "d" / "mllm_demo_data" / "3.jpg"
    raw = bytearray(image.read_bytes())
    raw[-10] ^= 1
    image.write_bytes(bytes(raw))
    assert make_plan(cfg, []).hashes.data != before


def test_unsupported_vision_family_refused_by_name():
    from runner.data.vlm import family_of

    with pytest.raises(UserError) as err:
        family_of({"model_type": "paligemma", "vision_config": {"model_type": "siglip_vision_model"}})
    assert "paligemma" in str(err.value) and "Qwen2.5-VL" in err.value.hint
    assert family_of({"model_type": "llama"}) is None
    assert family_of({"model_type": "qwen2_5_vl"}).video


# ---- the oracle: tokenized rows of every family ---------------------------------------------------
@pytest.fixture(scope="module")
def vlm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlms")
    return {f: save_tiny_vlm(root / f, f) for f in IMAGE_FAMILIES}


def prepared(tmp_path, model_dir, **extra):
    from runner import data as pipeline
    from runner.plan.resolve import make_plan

    plan = make_plan(write_vlm_config(tmp_path, model_dir, extra=extra), [])
    return pipeline.build_datasets(plan, progress=False), plan


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_oracle_no_image_or_prompt_token_carries_a_label(tmp_path, vlm_dirs, family):
    """Independent of the pipeline's alignment: the labelled tokens, decoded run by run, are exactly
    the rows' assistant answers with their end-of-turn, and no labelled id is a media token."""
    from transformers import AutoProcessor

    data, _ = prepared(tmp_path, vlm_dirs[family])
    processor = AutoProcessor.from_pretrained(vlm_dirs[family])
    tok = processor.tokenizer
    media_ids = {i for t, i in tok.get_added_vocab().items()
                 if t not in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")}
    rows = {json.dumps(r["messages"][1]["content"]): r for r in json.loads((SHARED_DATA / "mllm_demo.json").read_text())}
    assert len(data.train) == 6
    for sample in data.train:
        ids, labels = sample["input_ids"], sample["labels"]
        assert sum(1 for i in ids if i in media_ids) >= len(sample["images"]) > 0  # media expanded in the ids
        assert not any(lab != -100 and i in media_ids for i, lab in zip(ids, labels))
        assert all(lab in (-100, i) for i, lab in zip(ids, labels))
        runs, current = [], []
        for i, lab in zip(ids, labels):
            if lab != -100:
                current.append(i)
            elif current:
                runs.append(current)
                current = []
        runs += [current] if current else []
        answers = [tok.decode(run) for run in runs]
        first_answer = answers[0].replace("<|im_end|>", "").strip()
        row = rows[json.dumps(first_answer)]
        expected = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        assert [a.replace("<|im_end|>", "").strip() for a in answers] == expected
        assert all(a.rstrip("\n").endswith("<|im_end|>") for a in answers)


def test_preprocess_show_marks_the_image_span(tmp_path, vlm_dirs):
    import sys

    from tests.test_train_cli import launch

    cfg = write_vlm_config(tmp_path, vlm_dirs["qwen2_vl"])
    out = launch(sys.executable, "-m", "runner", "preprocess", str(cfg), "--show", "6")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "<|vision_start|>«<|image_pad|> ×" in out.stdout
    assert "(media: image 1: 1.jpg; image 2: 1.jpg)" in out.stdout and "(media: image 1: 2.jpg)" in out.stdout
    assert "[[They're Kane and Gretzka from Bayern Munich.<|im_end|>" in out.stdout


def test_text_model_with_image_rows_is_refused(tmp_path):
    from runner import data as pipeline
    from runner.plan.resolve import make_plan
    from tests.tiny_model import save_tiny_model

    model = save_tiny_model(tmp_path / "text")
    plan = make_plan(write_vlm_config(tmp_path, model), [])
    with pytest.raises(DataError) as err:
        pipeline.build_datasets(plan, progress=False)
    assert "text-only model" in str(err.value) and "mllm_demo.json:" in err.value.where


@pytest.mark.parametrize("family", ["gemma3", "llava", "llava_next", "idefics3", "smolvlm"])
def test_packing_refused_with_the_reason(tmp_path, vlm_dirs, family):
    with pytest.raises(UserError) as err:
        prepared(tmp_path, vlm_dirs[family], sequence={"packing": True})
    assert "cannot restart per packed sample" in str(err.value) and err.value.where == "sequence.packing"
    assert "Qwen2.5-VL" in str(err.value)  # what packing does cover


@pytest.mark.parametrize("split", [{"backend": "fsdp", "context_parallel": 2},
                                   {"backend": "deepspeed", "sequence_parallel": 2}])
def test_rows_split_over_processes_refused(tmp_path, vlm_dirs, split):
    """Context / sequence parallelism cut input ids, labels and positions, never pixel values: the
    pieces of an image row cannot meet their features."""
    key = next(k for k in split if k != "backend")
    with pytest.raises(UserError) as err:
        prepared(tmp_path, vlm_dirs["qwen2_5_vl"], distributed=split)
    assert err.value.where == f"distributed.{key}" and "image tokens without their features" in str(err.value)


def test_packed_qwen_rows_stay_samples_in_the_cache(tmp_path, vlm_dirs):
    """A micro batch is packed by the collator (runner.data.vlm_collate): the cached rows keep each
    sample's text and media."""
    data, _ = prepared(tmp_path, vlm_dirs["qwen2_vl"], sequence={"packing": True})
    assert len(data.train) == 6 and "text" in data.train.column_names and "position_ids" not in data.train.column_names


@pytest.mark.parametrize("recipe, family", [("qwen2.5-vl-lora.yaml", "qwen2_5_vl"), ("gemma3-vision.yaml", "gemma3")])
def test_smoke_builds_a_tiny_model_of_the_same_vlm_family(tmp_path, recipe, family):
    from runner.train.smoke import smoke_overrides
    from runner.train.tiny_vlm import HINTS
    from tests.tiny_model import REPO

    over = smoke_overrides(REPO / "cookbook" / recipe, [f"data.cache_dir={tmp_path}"])
    model = Path(next(o for o in over if o.startswith("model.path=")).split("=", 1)[1])
    config = json.loads((model / "config.json").read_text())
    assert config["model_type"] == family and "vision_config" in config
    assert (model / "processor_config.json").is_file()
    assert not any(hint in "google/gemma-3-1b-it" for hint, _ in HINTS)  # Gemma 3 1B is text-only


def test_placeholder_without_images_is_an_error_for_a_vlm_but_text_for_a_text_model(tmp_path, vlm_dirs):
    rows = json.loads((SHARED_DATA / "mllm_demo.json").read_text())
    del rows[2]["images"]
    path = demo_copy(tmp_path, [])
    path.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n")
    assert "images" not in read(path).rows[2]  # a text model reads "<image>" as text
    cfg = write_vlm_config(tmp_path, vlm_dirs["qwen2_vl"])
    cfg.write_text(cfg.read_text().replace(str(SHARED_DATA / "mllm_demo.json"), str(path)))
    from runner import data as pipeline
    from runner.plan.resolve import make_plan

    with pytest.raises(DataError) as err:
        pipeline.build_datasets(make_plan(cfg, []), progress=False)
    assert "1 <image> placeholder(s) but 0 images" in str(err.value) and f"{path}:4" in str(err.value)
