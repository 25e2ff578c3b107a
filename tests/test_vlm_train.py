"""Vision-language SFT end to end on tiny random models of each family: mllm_demo.json trains with
falling loss, the saved run reloads (lower loss on the training rows than its base) and generates
with an image; the CLI path (train, generate --image, merge) on Qwen2-VL; the video demo on
Qwen2-VL; what trains in the vision tower and projector."""

import json
import sys

import pytest

from tests.test_train_cli import launch
from tests.tiny_model import SHARED_DATA
from tests.tiny_vlm import save_tiny_vlm, write_vlm_config

IMAGE = str(SHARED_DATA / "mllm_demo_data" / "1.jpg")


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line).get("loss") is not None]


def falling(values) -> bool:
    return sum(values[-2:]) / 2 < sum(values[:2]) / 2


def batch_loss(model, plan, run_dir):
    """Mean loss of `model` over the run's training rows, batched by the run's own collator."""
    import torch

    from runner import data as pipeline
    from runner.data.vlm import load_processor
    from runner.data.vlm_collate import VisionCollator

    prepared = pipeline.build_datasets(plan, progress=False)
    collate = VisionCollator(load_processor(plan, None), plan)
    total = []
    with torch.no_grad():
        for i in range(0, len(prepared.train), 3):
            rows = [prepared.train[j] for j in range(i, min(i + 3, len(prepared.train)))]
            batch = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in collate(rows).items()}
            total.append(float(model(**batch).loss))
    return sum(total) / len(total)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "gemma3", "llava", "llava_next", "idefics3", "smolvlm"])
def test_family_trains_reloads_and_generates_with_an_image(tmp_path, family):
    from runner.plan.resolve import make_plan
    from runner.serve import vision_generate
    from runner.serve.generate import load_for_generation
    from runner.train.model import load_model
    from runner.train.recipe import train

    model_dir = save_tiny_vlm(tmp_path / "model", family)
    plan = make_plan(write_vlm_config(tmp_path, model_dir, training={"max_steps": 6}), [])
    run_dir = train(plan)
    assert falling(losses(run_dir)), losses(run_dir)
    model, _, stored = load_for_generation(run_dir)
    assert type(model).__name__.endswith("ForConditionalGeneration")
    base = load_model(plan, dtype="float32", attn_implementation="sdpa", for_training=False)
    assert batch_loss(model, plan, run_dir) < batch_loss(base, plan, run_dir) - 0.05
    processor = vision_generate.load_processor(run_dir)
    answer = vision_generate.chat(model, processor, [{"role": "user", "content": "Who are they?"}],
                                  vision_generate.read_images([IMAGE], stored), max_new_tokens=4)
    assert isinstance(answer, str)


@pytest.fixture(scope="module")
def qwen_run(tmp_path_factory):
    """Qwen2-VL trained through the CLI, as a user runs it."""
    root = tmp_path_factory.mktemp("qwen2vl")
    model_dir = save_tiny_vlm(root / "model", "qwen2_vl")
    cfg = write_vlm_config(root, model_dir, training={"max_steps": 8})
    out = launch(sys.executable, "-m", "runner", "train", str(cfg))
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "run", out


def test_cli_train_generate_with_image_and_merge(qwen_run, capsys):
    from runner.cli import main
    from runner.serve import vision_generate
    from runner.serve.generate import load_for_generation
    from runner.ship.merge import merge_run

    run_dir, out = qwen_run
    assert falling(losses(run_dir))
    assert (run_dir / "adapter_config.json").is_file() and (run_dir / "processor_config.json").is_file()
    model, _, plan = load_for_generation(run_dir)
    in_memory = vision_generate.chat(model, vision_generate.load_processor(run_dir),
                                     [{"role": "user", "content": "Who are they?"}],
                                     vision_generate.read_images([IMAGE], plan), max_new_tokens=6)
    merged = merge_run(run_dir)
    assert (merged / "processor_config.json").is_file()
    again = launch(sys.executable, "-m", "runner", "generate", str(merged), "-p", "Who are they?", "--image", IMAGE,
                   "--max-new-tokens", "6")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip() == in_memory  # the merged weights answer as the adapter does
    assert main(["generate", str(run_dir), "-p", "hi", "--image", "/nope.png"]) == 2
    assert "/nope.png does not exist" in capsys.readouterr().err


def test_video_demo_trains_on_qwen2_vl(tmp_path):
    from runner.plan.resolve import make_plan
    from runner.train.recipe import train

    model_dir = save_tiny_vlm(tmp_path / "model", "qwen2_vl")
    cfg = write_vlm_config(tmp_path, model_dir, dataset="mllm_video_demo.json", training={"max_steps": 5},
                           extra={"vision": {"video_fps": 1.0, "video_max_frames": 4}})
    plan = make_plan(cfg, [])
    run_dir = train(plan)
    assert falling(losses(run_dir))
    stats = json.loads((run_dir / "plan.json").read_text())["launch"]["data_stats"]["train"]
    assert stats["rows"] == 3 and stats["tokens"] > stats["trained_tokens"] > 0


def test_video_refused_for_a_family_without_videos(tmp_path):
    from runner import data as pipeline
    from runner.errors import DataError
    from runner.plan.resolve import make_plan

    model_dir = save_tiny_vlm(tmp_path / "model", "llava")
    plan = make_plan(write_vlm_config(tmp_path, model_dir, dataset="mllm_video_demo.json"), [])
    with pytest.raises(DataError) as err:
        pipeline.build_datasets(plan, progress=False)
    assert "LLaVA does not read videos" in str(err.value) and "mllm_video_demo.json:" in err.value.where


@pytest.mark.parametrize("tower, projector", [("frozen", "frozen"), ("lora", "full"), ("full", "lora")])
def test_what_trains_in_the_vision_side(tmp_path, tower, projector):
    from runner.plan.resolve import make_plan
    from runner.train import runtime as runtimes, vision
    from runner.train.model import load_model

    model_dir = save_tiny_vlm(tmp_path / "model", "qwen2_5_vl")
    cfg = write_vlm_config(tmp_path, model_dir, extra={"vision": {"tower": tower, "projector": projector}})
    plan = make_plan(cfg, [])
    rt, _ = runtimes.decide_runtime(plan, runtimes.environment(), runtimes.model_facts(plan), 6)
    model, info = vision.apply_adapter(load_model(plan, dtype="float32", attn_implementation="sdpa"), plan, rt)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    by_part = {part: [n for n in trained if vision.part_of(n) == part] for part in ("language", "tower", "projector")}
    assert by_part["language"] and all("lora_" in n for n in by_part["language"])
    for part, setting in (("tower", tower), ("projector", projector)):
        if setting == "frozen":
            assert not by_part[part]
        elif setting == "lora":
            assert by_part[part] and all("lora_" in n for n in by_part[part])
        else:  # full: every weight of the part, kept in the adapter as modules_to_save
            assert by_part[part] and not any("lora_" in n for n in by_part[part])
            assert any("modules_to_save" in n for n in by_part[part])
    assert info.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_qlora_keeps_the_vision_side_unquantized():
    from runner.train.vision import quantization_skips

    skips = quantization_skips()
    assert {"visual", "vision_tower", "vision_model", "multi_modal_projector", "merger", "lm_head"} <= set(skips)


def test_dpo_with_images_trains(tmp_path):
    """LLaMA-Factory's preference layout with images (sharegpt conversations, chosen/rejected):
    the image stays in the prompt, TRL's DPO pulls the chosen answer above the rejected one."""
    from runner.plan.resolve import make_plan
    from runner.train.recipe import train

    demo = json.loads((SHARED_DATA / "mllm_demo.json").read_text())
    rows = []
    for i, r in enumerate(demo):
        first = r["messages"][0]["content"]
        rows.append({"conversations": [{"from": "human", "value": first}],
                     "chosen": {"from": "gpt", "value": r["messages"][1]["content"]},
                     "rejected": {"from": "gpt", "value": demo[(i + 1) % len(demo)]["messages"][1]["content"]},
                     "images": [str(SHARED_DATA / p) for p in r["images"][: first.count("<image>")]]})
    (tmp_path / "pref.json").write_text(json.dumps(rows, ensure_ascii=False))
    model_dir = save_tiny_vlm(tmp_path / "model", "qwen2_vl")
    cfg = write_vlm_config(tmp_path, model_dir, training={"max_steps": 6, "stage": "dpo"})
    cfg.write_text(cfg.read_text().replace(str(SHARED_DATA / "mllm_demo.json"), str(tmp_path / "pref.json"))
                   .replace("format: openai", "format: preference"))
    run_dir = train(make_plan(cfg, []))
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    margins = [d["rewards/margins"] for d in logged if "rewards/margins" in d]
    assert len(margins) == 6 and sum(margins[-2:]) / 2 > 0.5 and logged[0]["loss"] == pytest.approx(0.693, abs=0.01)
    assert falling(losses(run_dir))


def test_serve_answers_image_content_parts_and_export_refuses(qwen_run, capsys):
    """`runner serve` on the VLM run: the official client sends an image part (data URL) and gets
    the answer `generate` gives for the same image; a local path is a 400; GGUF export refuses."""
    import base64

    import openai

    from runner.cli import main
    from tests.serve_proc import Server

    run_dir, _ = qwen_run
    assert main(["export", str(run_dir)]) == 2
    assert "does not export it to GGUF" in capsys.readouterr().err
    url = "data:image/jpeg;base64," + base64.b64encode((SHARED_DATA / "mllm_demo_data" / "1.jpg").read_bytes()).decode()
    expected = launch(sys.executable, "-m", "runner", "generate", str(run_dir), "-p", "Who are they?", "--image", IMAGE,
                      "--max-new-tokens", "6").stdout.strip()
    server = Server(run_dir)
    try:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=300)
        parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Who are they?"}]
        reply = client.chat.completions.create(model=server.name, max_tokens=6, temperature=0,
                                               messages=[{"role": "user", "content": parts}])
        assert reply.choices[0].message.content == expected
        assert reply.usage.prompt_tokens > 20  # the image's tokens are in the prompt
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=server.name, max_tokens=2, messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": IMAGE}}]}])
        assert "data:image" in str(err.value)
    finally:
        server.terminate()
