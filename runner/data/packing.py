"""Pack tokenized samples into rows of at most max_length tokens.

Each packed row carries position_ids that restart at 0 for every sample; with no attention
mask, transformers turns those restarts into a block-diagonal causal mask (sdpa / flash varlen),
so attention never crosses samples. Every sample's first label is already -100, so no loss
crosses a boundary either. Best-fit decreasing keeps rows full.
"""

from __future__ import annotations

import bisect


def best_fit_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sample indices per bin: longest first, each into the fullest bin it still fits."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
            bins[b].append(i)
            room -= n
        else:
            b, room = len(bins), capacity - n
            bins.append([i])
        if room > 0:
            bisect.insort(free, (room, b))
    return bins


def pack(columns: dict, max_length: int) -> tuple[dict, dict]:
    """input_ids/labels columns -> packed input_ids/labels/position_ids, and packing stats."""
    lengths = [len(x) for x in columns["input_ids"]]
    if any(n > max_length for n in lengths):
        raise ValueError("pack() needs samples no longer than max_length (apply the length policy first)")
    bins = sorted(best_fit_bins(lengths, max_length), key=lambda b: min(b))  # keep the shuffled order roughly
    out = {"input_ids": [], "labels": [], "position_ids": []}
    for b in bins:
        ids, labels, positions = [], [], []
        for i in sorted(b):
            ids += columns["input_ids"][i]
            labels += columns["labels"][i]
            positions += range(lengths[i])
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["position_ids"].append(positions)
    tokens = sum(lengths)
    stats = {"samples": len(lengths), "rows": len(bins),
             "efficiency": round(tokens / (len(bins) * max_length), 4) if bins else 0.0}
    return out, stats
