"""Batches for the SFT/PT trainer, exactly as the model sees them.

Unpacked rows: right-padded input_ids, labels (-100 on padding) and attention_mask (and position ids
under sequence parallelism). Rows split over processes are padded to a multiple of the split.
Packed rows: input_ids, labels and position_ids, and deliberately NO attention_mask: a mask of
ones would make the model attend across the samples of a row, while position_ids that restart
at 0 let transformers build per-sample causal masks. Padding in a packed batch is one more
"sample" (positions from 0, labels -100) so it never joins a real sample.
"""

from __future__ import annotations

IGNORE = -100


def make_collator(plan, tokenizer):
    """The collator for plan.training.collator; None for preference/kto stages, whose TRL
    trainers bring their own."""
    kind = plan.training.collator
    if kind not in ("packed", "padded"):
        return None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Rows split over processes (context / sequence parallelism) come in equal pieces.
    from runner.plan.parallelism import row_multiple, sizes

    dist = plan.distributed
    multiple = row_multiple(dist)
    if kind == "packed":
        return PackedCollator(pad_id, multiple)
    # Ulysses sequence parallelism shards rows by their position ids and does not read the mask.
    return PaddedCollator(pad_id, multiple, positions=sizes(dist)[1] > 1)


class PaddedCollator:
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, positions: bool = False):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.positions = positions

    def _width(self, rows):
        width = max(len(r["input_ids"]) for r in rows)
        m = self.pad_to_multiple_of
        return -(-width // m) * m if m else width

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = self._width(rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.as_tensor(r["input_ids"])
            labels[i, :n] = torch.as_tensor(r["labels"])
            mask[i, :n] = 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if self.positions:
            batch["position_ids"] = torch.arange(width, dtype=torch.long).repeat(len(rows), 1)
        return batch


class PackedCollator(PaddedCollator):
    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = self._width(rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        positions = torch.arange(width, dtype=torch.long).repeat(len(rows), 1)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.as_tensor(r["input_ids"])
            labels[i, :n] = torch.as_tensor(r["labels"])
            positions[i, :n] = torch.as_tensor(r["position_ids"])
            positions[i, n:] = torch.arange(width - n)
        return {"input_ids": ids, "labels": labels, "position_ids": positions}
