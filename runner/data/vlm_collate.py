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


def collator_for(stage: str, processor, plan):
    return VisionPreferenceCollator(processor, plan) if stage == "dpo" else VisionCollator(processor, plan)
