"""Rows with images and videos -> token ids and labels, through the model's processor.

The conversation is rendered with the processor's chat template (media parts as the family's
placeholders) and the trained character spans found by incremental rendering, as for text. The
processor then expands each placeholder into the image's tokens; its ids are the sample. Labels are
computed on the unexpanded text (its tokens, the spans) and carried over to the expanded ids by
aligning the two: runs the processor inserted (image and video tokens) get no label, and a trained
token the alignment cannot place stops the run, so no image token and no prompt token ever trains.

Columns: input_ids, labels, text (the rendering, for the collator's processor call), images,
videos (absolute paths or data URLs). The collator turns images into pixels per batch.
"""

from __future__ import annotations

import difflib
from collections import Counter

from runner.data import media
from runner.data.render import TemplateRenderError
from runner.data.tokenize import IGNORE, Encoded, _encode, _render_all, labels_from_spans
from runner.errors import DataError, UserError


def load_media(row: dict, plan) -> tuple[list, list]:
    """The row's images (PIL, scaled by the vision section) and videos ((frames, metadata),
    sampled at vision.video_fps, at most vision.video_max_frames)."""
    vision = plan.data.vision
    images = [media.load_image(ref, vision.max_pixels if vision else None, vision.min_pixels if vision else None)
              for ref in row.get("images") or []]
    return images, [load_video(ref, vision) for ref in row.get("videos") or []]


def load_video(path: str, vision):
    """transformers' own decoder (PyAV), frames picked evenly at the configured rate."""
    import numpy as np
    from transformers.video_utils import load_video as decode

    fps, cap = (vision.video_fps, vision.video_max_frames) if vision else (2.0, 32)

    def indices(metadata, **_):
        total = int(metadata.total_num_frames)
        duration = total / metadata.fps if metadata.fps else total
        wanted = max(1, min(cap, total, int(round(duration * fps))))
        return np.linspace(0, total - 1, wanted).round().astype(int)

    try:
        return decode(path, backend="pyav", sample_indices_fn=indices)
    except Exception as e:  # PyAV raises its own error classes for damaged files
        raise media.RowError(f"video {path} cannot be decoded: {e}") from None


def process(processor, texts: list, images: list, videos: list, plan, **kwargs):
    """The processor on rendered texts and each text's media (lists per text)."""
    call = dict(text=texts, return_tensors="pt", **kwargs)
    if any(images):
        call["images"] = images
    if any(videos):
        call["videos"] = [frames for row in videos for frames, _ in row]
        call["video_metadata"] = [meta for row in videos for _, meta in row]
        call["do_sample_frames"] = False  # sampled when decoded
    return processor(**call)


def expand_labels(short_ids: list, short_labels: list, long_ids: list, origin: str) -> list:
    """Labels for the processor's ids from those of the unexpanded text: equal runs keep theirs,
    inserted or replaced runs (the media tokens) get none."""
    labels = [IGNORE] * len(long_ids)
    placed = 0
    matcher = difflib.SequenceMatcher(None, short_ids, long_ids, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        labels[b:b + size] = short_labels[a:a + size]
        placed += sum(1 for x in short_labels[a:a + size] if x != IGNORE)
    trained = sum(1 for x in short_labels if x != IGNORE)
    if placed != trained:
        raise DataError(f"the processor changed {trained - placed} trained token(s) while expanding images",
                        where=origin, hint="the chat template puts media inside an assistant turn; move the "
                                           "image or video to a user turn")
    return labels


def tokenize_vlm(items, stage: str, plan, processor, renderer, train_on: str, seq: dict, family) -> Encoded:
    if stage == "dpo":
        return _dpo(items, plan, processor, renderer, seq, family)
    if stage != "sft":
        raise UserError(f"stage {stage} is not supported for vision-language rows yet", where="training.stage",
                        hint="train a vision-language model with stage sft or dpo")
    from runner.data.vlm import as_parts

    tokenizer = processor.tokenizer

    def render_one(row):
        _check_video(row, family)
        messages, tools, notes = renderer.prepare(row["messages"], row.get("tools"))
        return renderer.spans(as_parts(messages), tools, train_on), notes

    kept, rendered, notes, skipped = _render_all(items, render_one, False, renderer)
    counts = Counter(notes)
    columns = {"input_ids": [], "labels": [], "text": [], "images": [], "videos": []}
    origins = []
    max_length, policy = seq.get("max_length", 2048), seq.get("truncation", "truncate")
    for item, (text, spans) in zip(kept, rendered):
        short_ids, offsets = _encode(tokenizer, [text], offsets=True)
        short_labels = labels_from_spans(short_ids[0], offsets[0], spans)
        try:
            images, videos = load_media(item.row, plan)
            enc = process(processor, [text], [images], [videos], plan)
        except (ValueError, RuntimeError, OSError, media.RowError) as e:
            raise DataError(f"the processor cannot read this row's media: {e}", where=item.origin,
                            hint="check the image and video files") from None
        ids = enc["input_ids"][0].tolist()
        labels = expand_labels(short_ids[0], short_labels, ids, item.origin)
        if len(ids) > max_length:
            # Cutting a sample would cut image tokens away from their pixels: such rows are
            # dropped (counted), or stop the run with truncation: error.
            if policy == "error":
                raise UserError(f"sample is {len(ids)} tokens with its images, longer than "
                                f"sequence.max_length={max_length}", where=item.origin,
                                hint="raise max_length, or lower vision.max_pixels")
            counts["dropped_too_long"] += 1
            continue
        if all(x == IGNORE for x in labels):
            counts["dropped_no_trained_tokens"] += 1
            continue
        columns["input_ids"].append(ids)
        columns["labels"].append(labels)
        columns["text"].append(text)
        columns["images"].append(list(item.row.get("images") or []))
        columns["videos"].append(list(item.row.get("videos") or []))
        origins.append(item.origin)
    return Encoded(columns, origins, counts, skipped, len(kept))


def media_token_ids(processor) -> set:
    """Ids of the tokens that stand for media (for checks and `preprocess --show`)."""
    tokenizer = processor.tokenizer
    ids = set()
    for attr in ("image_token_id", "video_token_id", "boi_token_id", "eoi_token_id"):
        value = getattr(processor, attr, None)
        if isinstance(value, int):
            ids.add(value)
    for attr in ("image_token", "video_token", "fake_image_token", "global_image_token"):
        token = getattr(processor, attr, None)
        if isinstance(token, str):
            found = tokenizer.convert_tokens_to_ids(token)
            if isinstance(found, int) and found != tokenizer.unk_token_id:
                ids.add(found)
    return ids


def _check_video(row, family):
    media.check_counts(row)  # placeholders without media would reach the processor unexpanded
    if row.get("videos") and not family.video:
        raise TemplateRenderError(f"{family.name} does not read videos; this row has {len(row['videos'])}")


def _dpo(items, plan, processor, renderer, seq, family) -> Encoded:
    """Preference rows with media: the prompt (media placeholders in it) and both answers as
    rendered text, which TRL's vision preference collator hands to the processor per batch; the
    ids columns (prompt expanded by the processor) serve the statistics and the length policy."""
    from runner.data.tokenize import _prompt_and_completion
    from runner.data.vlm import as_parts

    tokenizer = processor.tokenizer

    def render_one(row):
        _check_video(row, family)
        messages = as_parts(row["messages"])
        prompt, chosen, notes = _prompt_and_completion(renderer, messages, row.get("tools"), row["chosen"])
        prompt_r, rejected, notes_r = _prompt_and_completion(renderer, messages, row.get("tools"), row["rejected"])
        if prompt_r != prompt:
            raise TemplateRenderError("the template renders the prompt differently before chosen and rejected")
        if "<image>" in chosen + rejected or "<video>" in chosen + rejected:
            raise TemplateRenderError("images and videos belong in the prompt, not in chosen or rejected")
        return (prompt, chosen, rejected), notes + notes_r

    kept, rendered, notes, skipped = _render_all(items, render_one, False, renderer)
    counts = Counter(notes)
    names = ("prompt", "chosen", "rejected", "images", "videos", "prompt_input_ids", "chosen_input_ids",
             "rejected_input_ids")
    columns = {k: [] for k in names}
    origins = []
    max_length = seq.get("max_length", 2048)
    for item, (prompt, chosen, rejected) in zip(kept, rendered):
        try:
            images, videos = load_media(item.row, plan)
            prompt_ids = process(processor, [prompt], [images], [videos], plan)["input_ids"][0].tolist()
        except (ValueError, RuntimeError, OSError, media.RowError) as e:
            raise DataError(f"the processor cannot read this row's media: {e}", where=item.origin,
                            hint="check the image and video files") from None
        (chosen_ids, rejected_ids), _ = _encode(tokenizer, [chosen, rejected])
        if len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)) > max_length:
            if seq.get("truncation", "truncate") == "error":
                raise UserError(f"preference sample with its images is longer than sequence.max_length={max_length}",
                                where=item.origin, hint="raise max_length, or lower vision.max_pixels")
            counts["dropped_too_long"] += 1
            continue
        for key, value in zip(names, (prompt, chosen, rejected, list(item.row.get("images") or []),
                                      list(item.row.get("videos") or []), prompt_ids, chosen_ids, rejected_ids)):
            columns[key].append(value)
        origins.append(item.origin)
    return Encoded(columns, origins, counts, skipped, len(kept))
