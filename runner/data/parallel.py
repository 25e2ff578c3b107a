"""Tokenize a split's rows in data.num_proc processes: each renders and tokenizes a contiguous
share of the rows, and the shares are joined in order. Every row is encoded on its own (the
length policy and the counts are per row), so the joined result is the one process's, byte for
byte. The workers are forked: they inherit the tokenizer and the template without pickling them.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections import Counter

from runner.errors import UserError

# Below this many rows per process, starting processes costs more than it saves.
MIN_ROWS_PER_PROCESS = 64
_JOB: tuple | None = None  # (stage, tokenizer, renderer, template, sequence), set before forking
# Shares tokenized in worker processes so far: tests prove the parallel path ran.
SHARES_FORKED = 0


def tokenize_parallel(plan, items: list, tokenizer, renderer, progress: bool):
    """runner.data.tokenize.tokenize_items over `items`, in plan.data.num_proc processes."""
    from runner.data.tokenize import tokenize_items
    from runner.plan.sections import to_dict

    stage, template = plan.data.stage, to_dict(plan.data.template)
    seq = dict(to_dict(plan.data.sequence), prompt_budget=plan.data.prompt_budget)  # grpo's prompt length
    procs = min(plan.data.num_proc or 1, max(1, len(items) // MIN_ROWS_PER_PROCESS))
    if procs <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return tokenize_items(items, stage, tokenizer, renderer, template, seq, progress)
    global _JOB, SHARES_FORKED
    _JOB = (stage, tokenizer, renderer, template, seq)
    bounds = [len(items) * k // procs for k in range(procs + 1)]
    shares = [items[a:b] for a, b in zip(bounds, bounds[1:])]
    try:
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            parts = pool.map(_tokenize_share, shares, chunksize=1)
        SHARES_FORKED += len(shares)
    finally:
        _JOB = None
    if any(isinstance(p, BaseException) for p in parts):
        # The error one process gives (its first rows and total count), not a share's: run it again whole.
        return tokenize_items(items, stage, tokenizer, renderer, template, seq, progress)
    return join(parts)


def _tokenize_share(share):
    from runner.data.tokenize import tokenize_items

    stage, tokenizer, renderer, template, seq = _JOB
    try:
        return tokenize_items(share, stage, tokenizer, renderer, template, seq, progress=False)
    except UserError as e:  # a data error: the parent reports it as one process would
        return UserError(str(e))
    except Exception as e:  # anything else, also reported by the parent's own run
        print(f"warning: a tokenizing process failed ({e.__class__.__name__}); tokenizing in one", file=sys.stderr)
        return RuntimeError(str(e))


def join(parts: list):
    """The Encoded of consecutive shares, as one process would have made it."""
    from runner.data.tokenize import Encoded

    first = parts[0]
    columns = {k: [x for p in parts for x in p.columns[k]] for k in first.columns}
    counts, skipped = Counter(), Counter()
    for p in parts:
        counts.update(p.counts)
        skipped.update(p.skipped)
    return Encoded(columns, [o for p in parts for o in p.origins], counts, skipped, sum(p.rows_in for p in parts))
