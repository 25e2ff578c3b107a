"""Vision-language models: which families runner trains, and their processor.

A model is a vision-language model when its config has a `vision_config`. The families below are
trained through AutoModelForImageTextToText and AutoProcessor with the processor's own chat template
and image-token expansion; any other vision-language family is refused by name rather than trained
as text (its images would be dropped). Pure Python at import; transformers inside the functions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError

# Why packing is refused for the other families: their image features are scattered by token
# position in the batch row or their attention is bidirectional inside an image, and runner has no
# proof that a packed row trains them as the unpacked samples would.
PACKING_REFUSED = ("sequence.packing is not supported for {} models: the position scheme ({}) cannot "
                   "restart per packed sample; packing covers {}")


@dataclass(frozen=True)
class Family:
    name: str
    video: bool           # the processor turns videos into tokens
    positions: str        # the position scheme, for the packing refusal
    packs: bool = False   # rows pack: each sample's 3-D positions from the model's own get_rope_index


FAMILIES = {
    "qwen2_vl": Family("Qwen2-VL", True, "Qwen's multimodal RoPE, 3-D positions per sample", True),
    "qwen2_5_vl": Family("Qwen2.5-VL", True, "Qwen's multimodal RoPE, 3-D positions per sample", True),
    "qwen3_vl": Family("Qwen3-VL", True, "Qwen's interleaved multimodal RoPE, 3-D positions per sample", True),
    "gemma3": Family("Gemma 3", False, "bidirectional attention inside each image's tokens"),
    "llava": Family("LLaVA", False, "image features scattered by token position"),
    "llava_next": Family("LLaVA-NeXT", False, "image features scattered by token position"),
    "idefics3": Family("Idefics3", False, "image features scattered by token position"),
    "smolvlm": Family("SmolVLM", True, "image features scattered by token position"),
}


def packing_refusal(family: Family) -> str | None:
    """Why rows of this family cannot be packed; None when they can."""
    if family.packs:
        return None
    packable = ", ".join(f.name for f in FAMILIES.values() if f.packs)
    return PACKING_REFUSED.format(family.name, family.positions, packable)


def varlen_refusal(model_type: str, packing: bool) -> str | None:
    """Why a vision-language model cannot train on varlen attention; None when it can (or is not
    a vision-language model). Only packed Qwen rows carry the per-token text positions varlen
    needs: unpacked, the Qwen decoders pass none to attention, and the other families' vision
    encoders call attention with masks."""
    family = FAMILIES.get(model_type)
    if family is None:
        return None
    if not family.packs:
        return f"{family.name}'s vision encoder attends with masks varlen does not take"
    if not packing:
        return f"unpacked {family.name} rows carry no per-token positions for varlen (sequence.packing: true does)"
    return None


# Module names of the vision side across these families (transformers 5 layout): the encoder, then
# the projector that maps its features into the language model.
TOWER_NAMES = ("visual", "vision_tower", "vision_model")
PROJECTOR_NAMES = ("multi_modal_projector", "connector", "visual.merger", "visual.deepstack_merger_list")


def config_dict(plan) -> dict | None:
    """The model's config.json as a dict (local folders); None for a hub id (read at load time)."""
    path = Path(plan.model.path)
    if plan.model.gguf_file or not (path / "config.json").is_file():
        return None
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def family_of(config) -> Family | None:
    """The supported family of a model config (dict or transformers config); None for a text model.
    A vision-language model of another family is refused."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    model_type = get("model_type")
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if get("vision_config") is not None:
        names = ", ".join(f.name for f in FAMILIES.values())
        raise UserError(f"model type {model_type!r} is a vision-language model runner does not train yet",
                        where="model.path",
                        hint=f"supported vision-language families: {names}; a text-only fine-tune of it would "
                             "drop its images, so runner does not do one")
    return None


def plan_family(plan) -> Family | None:
    """The model's family; None for a text model, and for a model whose config cannot be read here
    (a tokenizer-only folder for `preprocess`: the model's own load reports a missing config)."""
    config = config_dict(plan)
    if config is None and not Path(plan.model.path).is_dir():
        from runner.train.model import load_config

        try:
            config = load_config(plan)
        except (UserError, OSError, ValueError):
            return None
    return family_of(config) if config is not None else None


def load_processor(plan, tokenizer):
    """The model's AutoProcessor, with runner's tokenizer (special-token overrides, pad token) in
    place of its own, right padding, and the chat template the tokenizer lacks taken from it."""
    from transformers import AutoProcessor

    kwargs = {"trust_remote_code": plan.data.tokenizer.trust_remote_code}
    if plan.data.tokenizer.revision:
        kwargs["revision"] = plan.data.tokenizer.revision
    if not os.path.isdir(plan.data.tokenizer.path) and os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true"):
        kwargs["local_files_only"] = True
    try:
        processor = AutoProcessor.from_pretrained(plan.data.tokenizer.path, **kwargs)
    except (OSError, ValueError, ImportError) as e:
        raise UserError(f"cannot load the processor of {plan.data.tokenizer.path}: {e}", where="model.path",
                        hint="a vision-language model needs its processor files (preprocessor_config.json); "
                             "Qwen-VL and video processors need torchvision") from None
    if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
        raise UserError(f"{plan.data.tokenizer.path} has no image processor", where="model.path")
    if tokenizer is not None:
        if not tokenizer.chat_template and processor.chat_template:
            tokenizer.chat_template = processor.chat_template
        processor.tokenizer = tokenizer
    processor.tokenizer.padding_side = "right"
    return processor


def content_parts(text: str) -> list:
    """A turn's text with <image>/<video> placeholders as processor content parts."""
    import re

    parts = []
    for piece in re.split(r"(<image>|<video>)", text):
        if piece == "<image>":
            parts.append({"type": "image"})
        elif piece == "<video>":
            parts.append({"type": "video"})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


def as_parts(messages: list) -> list:
    """Messages whose text holds placeholders, with content lists the processor's template renders."""
    out = []
    for m in messages:
        content = m.get("content") or ""
        out.append({**m, "content": content_parts(content)} if ("<image>" in content or "<video>" in content)
                   else m)
    return out


def mark_media(text: str, tokenizer, sample: dict) -> str:
    """`preprocess --show`: each run of a repeated media token (an image's or a video's span, never
    trained) shown once as «TOKEN ×N», followed by which file it stands for."""
    import re

    specials = sorted({t for t in tokenizer.get_added_vocab() if len(t) > 1}, key=len, reverse=True)
    if not specials:
        return text
    files = [("image", f) for f in sample.get("images") or []] + [("video", f) for f in sample.get("videos") or []]
    pattern = re.compile("(" + "|".join(f"(?:{re.escape(t)})" for t in specials) + r")(?:\1)+")

    def collapse(match):
        token = match.group(1)
        return f"«{token} ×{len(match.group(0)) // len(token)}»"

    marked = pattern.sub(collapse, text)
    listing = "; ".join(f"{kind} {i}: {_file_name(f)}" for i, (kind, f) in enumerate(files, 1))
    return marked + (f"\n  (media: {listing})" if listing else "")


def _file_name(ref: str) -> str:
    return "data: URL" if ref.startswith("data:") else Path(ref).name
