"""Generation with images for a vision-language run: the conversation rendered by the run's
processor (its chat template, the images expanded as in training), then model.generate."""

from __future__ import annotations

from pathlib import Path

from runner.errors import UserError


def is_vision_run(run_dir) -> bool:
    """A run whose saved model or base is a supported vision-language model."""
    run_dir = Path(run_dir)
    if (run_dir / "processor_config.json").is_file() or (run_dir / "preprocessor_config.json").is_file():
        return True
    return False


def load_processor(run_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(run_dir)
    processor.tokenizer.padding_side = "left"  # generation continues every row from its end
    return processor


def image_messages(messages: list, images: list) -> list:
    """The images go into the last user turn, before its text (as the demo data places them)."""
    if not images:
        return messages
    out = [dict(m) for m in messages]
    last = max(i for i, m in enumerate(out) if m["role"] == "user")
    text = out[last]["content"]
    parts = text if isinstance(text, list) else [{"type": "text", "text": text}]
    out[last]["content"] = [{"type": "image"} for _ in images] + parts
    return out


def check_paths(paths: list) -> None:
    for path in paths:
        if not str(path).startswith("data:") and not Path(path).is_file():
            raise UserError(f"image {path} does not exist", where="--image")


def read_images(paths: list, plan=None) -> list:
    from runner.data.media import load_image
    from runner.data.rowjson import RowError

    vision = plan.data.vision if plan is not None else None
    images = []
    check_paths(paths)
    for i, path in enumerate(paths, 1):
        try:
            images.append(load_image(str(path), vision.max_pixels if vision else None,
                                     vision.min_pixels if vision else None))
        except (RowError, OSError, ValueError, SyntaxError) as e:
            raise UserError(f"image {i} ({str(path)[:80]}) cannot be read as an image: {e}", where="--image") from None
    return images


def chat(model, processor, messages, images, *, system=None, plan=None, max_new_tokens=256, temperature=0.0,
         top_p=1.0) -> str:
    import torch

    if system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    text = processor.apply_chat_template(image_messages(messages, images), add_generation_prompt=True, tokenize=False)
    call = {"text": [text], "return_tensors": "pt"}
    if images:
        call["images"] = [images]
    inputs = processor(**call)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    tok = processor.tokenizer
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, use_cache=True, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, **sampling)
    return tok.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
