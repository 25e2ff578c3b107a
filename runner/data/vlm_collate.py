"""Batches of vision-language rows: the processor turns each batch's texts and media into the
model's inputs (pixels, grids, token type ids: whatever the family's processor makes, Gemma 3's
token_type_ids and Qwen's mm_token_type_ids included), and the pipeline's labels are laid over its
right-padded ids. The ids must equal the pipeline's: the processor and its options are the ones the
labels were computed with, so a difference means the data changed under the cache."""

from __future__ import annotations

IGNORE = -100


class VisionCollator:
    def __init__(self, processor, plan):
        self.processor = processor
        self.plan = plan

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        from runner.data.vlm_tokenize import load_media, process

        media = [load_media(r, self.plan) for r in rows]
        batch = process(self.processor, [r["text"] for r in rows], [m[0] for m in media], [m[1] for m in media],
                        self.plan, padding=True)
        ids = batch["input_ids"]
        labels = torch.full_like(ids, IGNORE)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            if n > ids.shape[1] or ids[i, :n].tolist() != list(r["input_ids"]):
                raise RuntimeError("the processor made other token ids than the data pipeline for one row; "
                                   "the processor or its files changed after the data was prepared")
            labels[i, :n] = torch.as_tensor(r["labels"])
        out = dict(batch)
        out["labels"] = labels
        return out


class VisionPreferenceCollator:
    """DPO batches: TRL's vision preference collator (the processor on prompt with images, chosen and
    rejected) over the pipeline's rendered texts, with the images read from their files."""

    def __init__(self, processor, plan):
        from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

        self.plan = plan
        self.inner = DataCollatorForVisionPreference(processor)

    def __call__(self, rows: list[dict]) -> dict:
        from runner.data.vlm_tokenize import load_media

        examples = []
        for r in rows:
            images, videos = load_media(r, self.plan)
            if videos:
                raise RuntimeError("TRL's preference collator takes images only; this row has videos")
            examples.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "images": images})
        return self.inner(examples)


PACKED_KEY = "runner_packed"  # [samples, 3]: each packed sample's tokens, images and videos


class PackedVisionCollator(VisionCollator):
    """sequence.packing for the families whose positions restart per sample (Qwen-VL): the micro
    batch's samples, processed as VisionCollator does, laid end to end in one row without padding.
    Pixels and grids stay in sample order (the vision tower encodes each image on its own). The
    trainer turns PACKED_KEY into per-sample positions with the model's own get_rope_index
    (runner.train.fast.mrope) before the forward; a sample's first label is ignored so that no
    sample predicts the next one's first token."""

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        batch = super().__call__(rows)
        ids = batch["input_ids"]
        keep = batch.pop("attention_mask").bool()
        out = {}
        for key, value in batch.items():  # per-token columns (ids, labels, token types) lose the padding
            out[key] = value[keep].unsqueeze(0) if torch.is_tensor(value) and value.shape == ids.shape else value
        lengths = keep.sum(1)
        starts = torch.cumsum(lengths, 0) - lengths
        out["labels"][0, starts] = IGNORE
        counts = [[len(r.get("images") or []), len(r.get("videos") or [])] for r in rows]
        out[PACKED_KEY] = torch.cat([lengths[:, None], torch.tensor(counts, dtype=lengths.dtype)], 1)
        return out


def collator_for(stage: str, processor, plan):
    if stage == "dpo":
        return VisionPreferenceCollator(processor, plan)
    return PackedVisionCollator(processor, plan) if plan.data.sequence.packing else VisionCollator(processor, plan)
