"""Positions of packed Qwen-VL rows (runner.data.vlm_collate.PackedVisionCollator): each sample's
3-D multimodal RoPE positions from the model's own get_rope_index over that sample alone (its
tokens, its images' and videos' grids), with plain text positions 0..n-1 per sample stacked on
top. transformers' Qwen-VL decoders take such a [4, 1, T] tensor as packed input: the first row
tells attention (varlen, flash, or sdpa's block mask) where each sample starts, the other three
rotate queries and keys. So every sample sees exactly the positions it has unpacked."""

from __future__ import annotations

import inspect

from runner.data.vlm_collate import PACKED_KEY


def rope_owner(model):
    """The module with get_rope_index, looking through DDP and PEFT wrappers."""
    base = getattr(model, "module", model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    for candidate in (getattr(base, "model", None), base):
        if candidate is not None and hasattr(candidate, "get_rope_index"):
            return candidate
    raise RuntimeError(f"{type(base).__name__} has no get_rope_index: its rows cannot be packed")


def with_packed_positions(model, inputs: dict) -> dict:
    """`inputs` with PACKED_KEY replaced by the packed row's position_ids; unchanged without it."""
    if PACKED_KEY not in inputs:
        return inputs
    import torch

    inputs = dict(inputs)
    packed = inputs.pop(PACKED_KEY)
    owner = rope_owner(model)
    takes = inspect.signature(owner.get_rope_index).parameters
    ids = inputs["input_ids"]
    media = {"image_grid_thw": inputs.get("image_grid_thw"), "video_grid_thw": inputs.get("video_grid_thw"),
             "second_per_grid_ts": inputs.get("second_per_grid_ts")}
    rope, text = [], []
    start = image = video = 0
    for length, images, videos in packed.tolist():
        kwargs = {"image_grid_thw": media["image_grid_thw"][image:image + images] if images else None,
                  "video_grid_thw": media["video_grid_thw"][video:video + videos] if videos else None}
        if videos and media["second_per_grid_ts"] is not None:
            kwargs["second_per_grid_ts"] = media["second_per_grid_ts"][video:video + videos]
        if "mm_token_type_ids" in inputs:
            kwargs["mm_token_type_ids"] = inputs["mm_token_type_ids"][:, start:start + length]
        kwargs = {k: v for k, v in kwargs.items() if k in takes}
        positions, _ = owner.get_rope_index(ids[:, start:start + length], **kwargs)
        rope.append(positions)
        text.append(torch.arange(length, device=ids.device, dtype=positions.dtype))
        start, image, video = start + length, image + images, video + videos
    inputs["use_cache"] = False  # with a cache, transformers builds no per-sample mask from the positions
    inputs["position_ids"] = torch.cat([torch.cat(text).view(1, 1, -1), torch.cat(rope, dim=2)], dim=0)
    return inputs
