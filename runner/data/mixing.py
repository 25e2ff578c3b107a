"""Mix several datasets (num_samples, weight), shuffle with the plan's seed, split off validation.

Works on (row, origin) pairs before tokenization, so that sampling costs nothing to tokenize.
"""

from __future__ import annotations

import math
import random

from runner.errors import UserError

# Upsampling repeats rows in memory and tokenizes each copy: more passes than this over one
# dataset are what training.epochs is for, and a typo (3e9) must not exhaust memory.
MAX_REPEAT = 100


def sample_rows(items: list, num_samples: int | None, weight: float, rng: random.Random, name: str = "") -> list:
    """num_samples rows (repeating the file when it is smaller), then scaled by weight."""
    size = len(items) if num_samples is None else int(num_samples)
    size = int(math.floor(size * weight + 0.5)) if weight != 1.0 else size
    if items and size > MAX_REPEAT * len(items):
        asked = " and ".join(x for x in (f"num_samples {int(num_samples)}" if num_samples is not None else "",
                                         f"weight {weight:g}" if weight != 1.0 else "") if x)
        raise UserError(f"{asked} would repeat the {len(items)} rows of dataset {name} {size / len(items):,.0f} times; "
                        f"a dataset is repeated at most {MAX_REPEAT} times ({MAX_REPEAT * len(items)} rows)",
                        where=f"datasets: {name}",
                        hint="lower num_samples or weight, or train more passes with training.epochs")
    if num_samples is not None:
        items = _resize(items, int(num_samples), rng)
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
        mixed += sample_rows(items, entry.get("num_samples"), float(entry.get("weight", 1.0)), rng,
                             entry.get("path", ""))
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
