"""Tiny random vision-language models built offline, in-process: a config of the real family, the
family's real image (and video) processor class with small resolutions, and the tiny BPE tokenizer
of tests/tiny_tokenizer.py with the family's media tokens added. Saved as a Hugging Face folder that
AutoProcessor and AutoModelForImageTextToText load like the real model.

The chat templates are short ones written here in each family's shape (media parts rendered as the
family's placeholder, the same turn markers as the text tiny model), since the real ones come from
the hub.
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny_tokenizer import tiny_tokenizer

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "llava", "llava_next", "idefics3", "smolvlm")

# How a media part renders in each family's template (what its processor then expands).
_QWEN_MEDIA = {"image": "<|vision_start|><|image_pad|><|vision_end|>",
               "video": "<|vision_start|><|video_pad|><|vision_end|>"}
_MEDIA = {
    "qwen2_vl": _QWEN_MEDIA, "qwen2_5_vl": _QWEN_MEDIA, "qwen3_vl": _QWEN_MEDIA,
    "gemma3": {"image": "<start_of_image>"},
    "llava": {"image": "<image>"}, "llava_next": {"image": "<image>"},
    "idefics3": {"image": "<image>"}, "smolvlm": {"image": "<image>"},
}
_SPECIALS = {
    "qwen": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "gemma3": ["<start_of_image>", "<end_of_image>", "<image_soft_token>"],
    "llava": ["<image>"],
    "idefics3": ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"],
}


def _specials(family: str) -> list[str]:
    if family.startswith("qwen"):
        return _SPECIALS["qwen"]
    if family.startswith("llava"):
        return _SPECIALS["llava"]
    if family in ("idefics3", "smolvlm"):
        return _SPECIALS["idefics3"]
    return _SPECIALS[family]


def chat_template(family: str) -> str:
    """ChatML turns; a content list renders its text parts and each media part as the family's
    placeholder."""
    media = _MEDIA[family]
    parts = "".join(
        "{%- elif part['type'] == '" + kind + "' %}{{ '" + text + "' }}" for kind, text in media.items())
    return (
        "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{%- if message['content'] is string %}{{ message['content'] }}{%- else %}"
        "{%- for part in message['content'] %}{%- if part['type'] == 'text' %}{{ part['text'] }}"
        + parts + "{%- endif %}{%- endfor %}{%- endif %}{{ '<|im_end|>\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
    )


def _text_config(tok, hidden=32, layers=2, **extra) -> dict:
    return dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.2,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                tie_word_embeddings=False, **extra)


def _ids(tok, *tokens):
    return [tok.convert_tokens_to_ids(t) for t in tokens]


def build(family: str):
    """(config, processor) of a tiny `family` model."""
    import transformers as T

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny VLM family {family!r}")
    tok = tiny_tokenizer(tuple(_specials(family)))
    template = chat_template(family)
    if family.startswith("qwen"):
        image_token, video_token, start, end = _ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                    "<|vision_end|>")
        ids = dict(image_token_id=image_token, video_token_id=video_token, vision_start_token_id=start,
                   vision_end_token_id=end)
        if family == "qwen3_vl":
            text = _text_config(tok, head_dim=8, rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 2],
                                                               "mrope_interleaved": True})
            vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                          deepstack_visual_indexes=[0])
            config = T.Qwen3VLConfig(text_config=text, vision_config=vision, **ids, tie_word_embeddings=False)
            image_proc = T.Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2,
                                                 min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
            video_proc = T.Qwen3VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2,
                                                 size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 16},
                                                 fps=1.0, max_frames=4, min_frames=2)
            processor = T.Qwen3VLProcessor(image_processor=image_proc, tokenizer=tok, video_processor=video_proc,
                                           chat_template=template)
            return config, processor
        text = _text_config(tok, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
        vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, in_chans=3, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
        if family == "qwen2_5_vl":
            vision.update(intermediate_size=64, out_hidden_size=32, fullatt_block_indexes=[0], window_size=56)
        cls = T.Qwen2VLConfig if family == "qwen2_vl" else T.Qwen2_5_VLConfig
        config = cls(text_config=text, vision_config=vision, **ids, tie_word_embeddings=False)
        image_proc = T.Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2,
                                             min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
        video_proc = T.Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2,
                                             min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
        proc_cls = T.Qwen2VLProcessor if family == "qwen2_vl" else T.Qwen2_5_VLProcessor
        return config, proc_cls(image_processor=image_proc, tokenizer=tok, video_processor=video_proc,
                                chat_template=template)
    if family == "gemma3":
        boi, eoi, soft = _ids(tok, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
        # Gemma 3's processor reads these names off the tokenizer, as the real tokenizer_config has them.
        tok._set_model_specific_special_tokens({"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                                "image_token": "<image_soft_token>"})
        text = _text_config(tok, head_dim=8, sliding_window=64, query_pre_attn_scalar=8)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      image_size=56, patch_size=14)
        config = T.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, boi_token_index=boi,
                                eoi_token_index=eoi, image_token_index=soft, tie_word_embeddings=False,
                                initializer_range=0.2)
        image_proc = T.Gemma3ImageProcessor(size={"height": 56, "width": 56})
        return config, T.Gemma3Processor(image_processor=image_proc, tokenizer=tok, chat_template=template,
                                         image_seq_length=4)
    if family.startswith("llava"):
        (image,) = _ids(tok, "<image>")
        vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, image_size=28, patch_size=14, projection_dim=32)
        text = dict(_text_config(tok), model_type="llama")
        if family == "llava":
            config = T.LlavaConfig(text_config=text, vision_config=vision, image_token_index=image,
                                   vision_feature_layer=-1, image_seq_length=4, tie_word_embeddings=False)
            image_proc = T.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
            return config, T.LlavaProcessor(image_processor=image_proc, tokenizer=tok, chat_template=template,
                                            patch_size=14, vision_feature_select_strategy="default",
                                            num_additional_image_tokens=1)
        config = T.LlavaNextConfig(text_config=text, vision_config=vision, image_token_index=image,
                                   vision_feature_layer=-1, image_grid_pinpoints=[[28, 28], [28, 56], [56, 28]],
                                   image_seq_length=4, tie_word_embeddings=False)
        image_proc = T.LlavaNextImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                               image_grid_pinpoints=[[28, 28], [28, 56], [56, 28]])
        return config, T.LlavaNextProcessor(image_processor=image_proc, tokenizer=tok, chat_template=template,
                                            patch_size=14, vision_feature_select_strategy="default",
                                            num_additional_image_tokens=1)
    # idefics3 / smolvlm
    image, fake, glob, eou = _ids(tok, "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>")
    text = dict(_text_config(tok), model_type="llama")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=28, patch_size=14)
    size = {"longest_edge": 56}
    if family == "idefics3":
        config = T.Idefics3Config(text_config=text, vision_config=vision, image_token_id=image, scale_factor=1,
                                  tie_word_embeddings=False)
        image_proc = T.Idefics3ImageProcessor(size=size, max_image_size={"longest_edge": 28})
        return config, T.Idefics3Processor(image_processor=image_proc, tokenizer=tok, chat_template=template,
                                           image_seq_len=4)
    config = T.SmolVLMConfig(text_config=text, vision_config=vision, image_token_id=image, scale_factor=1,
                             tie_word_embeddings=False)
    image_proc = T.SmolVLMImageProcessor(size=size, max_image_size={"longest_edge": 28})
    video_proc = T.SmolVLMVideoProcessor(size=size, max_image_size={"longest_edge": 28})
    return config, T.SmolVLMProcessor(image_processor=image_proc, tokenizer=tok, video_processor=video_proc,
                                      chat_template=template, image_seq_len=4)


def save_tiny_vlm(directory, family: str = "qwen2_vl", seed: int = 0) -> Path:
    """A random tiny `family` model with its processor in `directory`; returns the directory."""
    import torch
    from transformers import AutoModelForImageTextToText

    directory = Path(directory)
    config, processor = build(family)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    tok = processor.tokenizer
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def write_vlm_config(directory, model_dir, *, dataset: str = "mllm_demo.json", name: str = "tiny-vlm",
                     training: dict | None = None, extra: dict | None = None) -> Path:
    """A runner YAML in `directory` that trains the tiny VLM on a shared multimodal demo file."""
    import yaml

    from tests.tiny_model import SHARED_DATA

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {
        "name": name,
        "model": {"path": str(model_dir), "dtype": "float32"},
        "adapter": {"kind": "lora", "r": 8, "dropout": 0.0},
        "datasets": [{"path": str(SHARED_DATA / dataset), "format": "openai"}],
        "template": {"name": "tokenizer"},
        "sequence": {"max_length": 512},
        "data": {"cache_dir": str(directory / "cache")},
        "training": {"stage": "sft", "max_steps": 12, "micro_batch_size": 2, "gradient_accumulation": 1,
                     "learning_rate": 1e-2, "lr_scheduler": "constant", "warmup_ratio": 0.0, "precision": "fp32",
                     **(training or {})},
        "tracking": {"log_every": 1, "progress_bar": False},
        "output": {"dir": str(directory / "run")},
    }
    for key, value in (extra or {}).items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
