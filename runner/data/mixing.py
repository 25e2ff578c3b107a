"""Mix several datasets (num_samples, weight), shuffle with the plan's seed, split off validation.

Works on (row, origin) pairs before tokenization, so that sampling costs nothing to tokenize.
"""

from __future__ import annotations

import math
import random


def sample_rows(items: list, num_samples: int | None, weight: float, rng: random.Random) -> list:
    """num_samples rows (repeating the file when it is smaller), then scaled by weight."""
    if num_samples is not None:
        items = _resize(items, num_samples, rng)
    if weight != 1.0:
        items = _resize(items, int(math.floor(len(items) * weight + 0.5)), rng)
    return items


def _resize(items: list, n: int, rng: random.Random) -> list:
    if not items:
        return []
    full, rest = divmod(n, len(items))
    return items * full + rng.sample(items, rest)


def mix(datasets: list[tuple[list, dict]], seed: int, shuffle: bool) -> list:
    """datasets: (items, entry) pairs; each entry's num_samples/weight applies to its items."""
    rng = random.Random(seed)
    mixed = []
    for items, entry in datasets:
        mixed += sample_rows(items, entry.get("num_samples"), float(entry.get("weight", 1.0)), rng)
    if shuffle:
        rng.shuffle(mixed)
    return mixed


def split_validation(items: list, val_size: float, seed: int) -> tuple[list, list]:
    """val_size < 1 is a fraction, >= 1 a row count; rows are picked with the seed, order kept."""
    if not val_size:
        return items, []
    n = int(val_size) if val_size >= 1 else int(round(len(items) * val_size))
    n = min(max(n, 1), max(len(items) - 1, 0))
    picked = set(random.Random(seed + 1).sample(range(len(items)), n))
    train = [x for i, x in enumerate(items) if i not in picked]
    val = [x for i, x in enumerate(items) if i in picked]
    return train, val
