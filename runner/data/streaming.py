"""data.streaming: the training rows read, tokenized and packed as training consumes them.

Rows are read in file order, dataset after dataset, `data.stream_buffer` rows at a time; a buffer
is shuffled (data.shuffle, training.seed), tokenized with the same formats, template and masking
as the whole pipeline, and packed with the same best-fit packer. A dataset that fits in one
buffer therefore gives exactly the rows the whole pipeline gives. Memory holds one buffer, never
the file; nothing is cached (the data hash is still made over the files' bytes).

The first buffer is prepared before the model loads: its statistics are what the untrainable-data
checks read, and a bad row or template in it stops the run at once.
"""

from __future__ import annotations

import random

from runner.errors import UserError


def build_streaming(plan, tokenizer, progress: bool):
    from runner.data.build import PreparedData, _load_items, check_formats, encode_split, make_renderer
    from runner.plan.sections import to_dict

    problems = check_formats(plan)
    if problems:
        raise UserError(problems[0][len("error: "):], where="datasets")
    data = to_dict(plan.data)
    renderer, template_info = make_renderer(plan, tokenizer)
    stream = TokenStream(plan, tokenizer, renderer)
    first = stream.first_block()
    if first is None:
        raise UserError("no training rows are left after reading the datasets", where="datasets")
    columns, part = first
    if not columns["input_ids"]:
        raise UserError("no train samples are left after the length policy in the first "
                        f"{plan.data.stream_buffer} rows read", where="sequence",
                        hint="see the counts of dropped rows; raise max_length or change truncation")
    part["streamed"] = f"statistics of the first {part['rows_in']} rows read (data.streaming)"
    ds_stats = [{"path": d["path"], "format": d["format"], "streamed": True} for d in data["datasets"]]
    stats = {"data_hash": plan.hashes.data, "stage": plan.data.stage, "template": template_info,
             "datasets": ds_stats, "train": part, "eval": None}
    evaluation = None
    if data["eval_datasets"]:  # eval rows are few: read whole, as without streaming
        items, eval_stats = _load_items(data["eval_datasets"], data, mix=False)
        stats["datasets"] += eval_stats
        evaluation, stats["eval"] = encode_split(plan, "eval", items, tokenizer, renderer, progress)
    return PreparedData(as_iterable(stream), evaluation, dict(stats, cache="off (streaming)", cache_dir=None))


class TokenStream:
    """Training rows (dicts of token lists) in order, read afresh on each pass; `set_epoch` picks
    the shuffle of the next pass, as the Trainer calls it on a dataset between epochs."""

    def __init__(self, plan, tokenizer, renderer):
        self.plan, self.tokenizer, self.renderer = plan, tokenizer, renderer
        self.epoch = 0
        self._started = None  # (first block, the pass it came from): the first pass goes on from it

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def blocks(self):
        """(columns, statistics) per buffer of rows."""
        from runner.data.build import encoded_columns
        from runner.data.tokenize import tokenize_items
        from runner.plan.sections import to_dict

        data = self.plan.data
        rng = random.Random(data.seed + self.epoch)  # pass 0 shuffles as the whole pipeline does
        template, seq = to_dict(data.template), to_dict(data.sequence)
        for block in chunks(stream_items(self.plan), data.stream_buffer):
            if data.shuffle:
                rng.shuffle(block)
            encoded = tokenize_items(block, data.stage, self.tokenizer, self.renderer, template, seq, progress=False)
            yield encoded_columns(self.plan, encoded)

    def first_block(self):
        """The first buffer, prepared once: the first pass starts from it rather than read it again."""
        blocks = self.blocks()
        first = next(blocks, None)
        self._started = (first, blocks) if first is not None else None
        return first

    def _pass(self):
        if self._started is not None and self.epoch == 0:
            (first, rest), self._started = self._started, None
            yield first
            yield from rest
        else:
            yield from self.blocks()

    def __iter__(self):
        for columns, _ in self._pass():
            names = list(columns)
            for values in zip(*(columns[n] for n in names)):
                yield dict(zip(names, values))


def chunks(iterable, size: int):
    block = []
    for x in iterable:
        block.append(x)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def stream_items(plan):
    """runner.data.tokenize.Item per good row of the training datasets, one dataset after another,
    each capped at its max_samples. A bad row stops the stream (on_bad_row: error) where it is
    found, or is skipped."""
    from runner.data.formats import Normalizer, RowError
    from runner.data.readers import _BadRows, capped, iter_raw_rows
    from runner.data.tokenize import Item
    from runner.plan.sections import to_dict

    system_default = plan.data.template.system_prompt
    for ds in to_dict(plan.data)["datasets"]:
        if ds.get("system") is None and system_default:
            ds["system"] = system_default
        normalise = Normalizer(ds["format"], ds.get("columns"), ds.get("roles"), ds.get("substitute"), ds.get("system"))
        policy = ds.get("on_bad_row", "error")
        bad, kept = _BadRows(policy, ds["format"]), 0
        for where, raw in capped(iter_raw_rows(ds), ds.get("max_samples")):
            try:
                if isinstance(raw, RowError):
                    raise raw
                row = normalise(raw)
            except RowError as e:
                bad.add(where, str(e), None if isinstance(raw, RowError) else raw)
                if policy != "skip":
                    bad.raise_if_any(ds["path"], kept)
                continue
            kept += 1
            yield Item(row, where, policy)
        if not kept:
            bad.raise_if_any(ds["path"], kept)
            raise UserError(f"dataset {ds['path']} gave no rows", where=f"datasets: {ds['path']}")


def as_iterable(stream: TokenStream):
    """A torch IterableDataset over the stream (the Trainer reads it without a sampler or length)."""
    from torch.utils.data import IterableDataset

    class StreamedRows(IterableDataset):
        def __iter__(self):
            return iter(stream)

        def set_epoch(self, epoch: int) -> None:
            stream.set_epoch(epoch)

    return StreamedRows()


def row_count(dataset) -> int | None:
    """len(dataset), or None for a stream."""
    try:
        return len(dataset)
    except TypeError:
        return None
