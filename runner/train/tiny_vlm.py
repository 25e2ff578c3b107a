"""Tiny random vision-language models of each supported family: a config of the real family, the
family's real image (and video) processor class with small resolutions, and a small tokenizer with
the family's media tokens. `runner train --smoke` builds one for a VLM recipe; the tests build theirs
with the tests' tokenizer. The chat templates are short ones in each family's shape (ChatML turns,
media parts rendered as the family's placeholder), since the real ones come from the hub."""

from __future__ import annotations

from pathlib import Path

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


def specials(family: str) -> list[str]:
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


def build(family: str, make_tokenizer):
    """(config, processor) of a tiny `family` model; `make_tokenizer(specials)` returns a fast
    tokenizer with ChatML turn tokens, pad and eos, and the given media tokens added."""
    import transformers as T

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny VLM family {family!r}")
    tok = make_tokenizer(tuple(specials(family)))
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


def save(directory: Path, family: str, make_tokenizer, seed: int = 0) -> Path:
    """A random tiny `family` model with its processor in `directory`."""
    import torch
    from transformers import AutoModelForImageTextToText

    config, processor = build(family, make_tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    tok = processor.tokenizer
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


# Checked in order against a hub id (a local folder's config.json names its model_type instead).
# Gemma 3's 1B model is text-only; its larger ones read images.
HINTS = [("qwen2.5-vl", "qwen2_5_vl"), ("qwen2_5_vl", "qwen2_5_vl"), ("qwen2-vl", "qwen2_vl"), ("qwen3-vl", "qwen3_vl"),
         ("llava-v1.6", "llava_next"), ("llava-next", "llava_next"), ("llava", "llava"), ("idefics3", "idefics3"),
         ("smolvlm", "smolvlm"), ("gemma-3-4b", "gemma3"), ("gemma-3-12b", "gemma3"), ("gemma-3-27b", "gemma3")]


def family_for(plan) -> str | None:
    """The vision-language family of a recipe's model, or None for a text model."""
    from runner.data.vlm import config_dict

    config = config_dict(plan)
    if config is not None:
        return config.get("model_type") if config.get("model_type") in FAMILIES else None
    name = plan.model.path.lower()
    return next((family for hint, family in HINTS if hint in name), None)


def smoke_tokenizer(media: tuple):
    """A small BPE tokenizer with ChatML turn tokens and the family's media tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from runner.train.smoke import CORPUS

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *media]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)


def build_for_smoke(family: str, directory: Path) -> Path:
    """The tiny `family` model for `--smoke`, built once per cache folder (written to a temporary
    name, then renamed)."""
    import json
    import shutil

    if (directory / "smoke.json").is_file():
        return directory
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save(tmp, family, smoke_tokenizer)
    (tmp / "smoke.json").write_text(json.dumps({"family": family, "note": "random weights, for smoke runs"}))
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory
