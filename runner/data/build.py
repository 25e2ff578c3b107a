"""build_datasets(plan): read, normalise, mix, render, tokenize, apply the length policy, pack,
and cache — or load the cached result when plan.hashes.data matches (no tokenizer needed)."""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass

from runner.errors import UserError

from runner.config.checks import STAGE_FORMATS  # one table: lint and the pipeline agree

YOUNG_THRESHOLD, NEVER = 10_000, 2**30  # allocations between young collections (Python's default: 700)


@dataclass
class PreparedData:
    train: object            # datasets.Dataset
    eval: object | None      # datasets.Dataset or None
    stats: dict


def check_formats(plan) -> list[str]:
    """Errors for datasets whose format the training stage cannot use."""
    stage = plan.data.stage
    problems = []
    for key in ("datasets", "eval_datasets"):
        for i, ds in enumerate(getattr(plan.data, key)):
            fmt = ds.format
            if fmt not in STAGE_FORMATS.get(stage, set()):
                wanted = ", ".join(sorted(STAGE_FORMATS.get(stage, ())))
                problems.append(f"error: {key}[{i}] ({ds.path}) has format {fmt}, which stage {stage} cannot "
                                f"train on (use one of: {wanted})")
    return problems


def build_datasets(plan, tokenizer=None, progress: bool = True) -> PreparedData:
    """The tokenized train/eval datasets of the plan. `tokenizer` may be None or a zero-argument
    callable: it is loaded only when the cache must be built."""
    from runner.data import cache

    if plan.data.streaming:  # read as training goes: nothing is prepared whole or cached
        from runner.data.streaming import build_streaming

        return build_streaming(plan, _get_tokenizer(plan, tokenizer), progress)
    if not plan.hashes.data:  # a hub dataset not downloaded yet has no content hash: no cache
        train, evaluation, stats = _build(plan, tokenizer, progress)
        return PreparedData(train, evaluation, dict(stats, cache="off", cache_dir=None))
    entry = cache.entry_dir(plan.data.cache_dir, plan.hashes.data)
    train, evaluation, stats, built = cache.build_or_load(entry, lambda: _build(plan, tokenizer, progress))
    stats = dict(stats, cache="built" if built else "hit", cache_dir=str(entry))
    return PreparedData(train, evaluation, stats)


def _get_tokenizer(plan, tokenizer):
    if tokenizer is None:
        from runner.data.tokenizer import load_tokenizer

        return load_tokenizer(plan)
    return tokenizer() if callable(tokenizer) and not hasattr(tokenizer, "encode") else tokenizer


def _build(plan, tokenizer, progress):
    with young_collections_only():
        return _build_splits(plan, tokenizer, progress)


@contextlib.contextmanager
def young_collections_only():
    """While the splits are built, Python's cycle collector looks at new objects only, and at the
    older generations never. Its passes over the millions of small lists a build keeps cost about
    a fifth of the build (bench/results/preprocess.md); the cycles a build does make (an exception's
    traceback for each refused row) are young when dropped, and are still collected."""
    old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, NEVER, NEVER)
    try:
        yield
    finally:
        gc.set_threshold(*old)


def _build_splits(plan, tokenizer, progress):
    problems = check_formats(plan)
    if problems:
        raise UserError(problems[0][len("error: "):], where="datasets")
    from runner.plan.sections import to_dict

    data, stage = to_dict(plan.data), plan.data.stage
    train_items, ds_stats = _load_items(data["datasets"], data, mix=True)
    if data.get("eval_datasets"):
        eval_items, eval_stats = _load_items(data["eval_datasets"], data, mix=False)
        ds_stats += eval_stats
    else:
        from runner.data.mixing import split_validation

        train_items, eval_items = split_validation(train_items, data.get("val_size") or 0, data.get("seed", 0))
    if not train_items:
        raise UserError("no training rows are left after reading the datasets", where="datasets")

    tok = _get_tokenizer(plan, tokenizer)
    from runner.data.vlm_build import check_media_rows

    family, processor = check_media_rows(plan, train_items + eval_items, tok)
    renderer, template_info = make_renderer(plan, tok)
    seq = dict(data["sequence"], prompt_budget=data.get("prompt_budget"))
    stats = {"data_hash": plan.hashes.data, "stage": stage, "template": template_info, "datasets": ds_stats}
    splits = {}
    for split, items in (("train", train_items), ("eval", eval_items)):
        if not items:
            splits[split], stats[split] = None, None
            continue
        if family is not None:  # images and videos through the model's processor
            splits[split], stats[split] = encode_vlm_split(plan, split, items, (family, processor), renderer, seq)
        else:
            splits[split], stats[split] = encode_split(plan, split, items, tok, renderer, progress)
    return splits["train"], splits["eval"], stats


def make_renderer(plan, tok):
    """The chat-template renderer (None for pt) and what the statistics say of the template."""
    from runner.data.render import Renderer
    from runner.data.templates import resolve_template
    from runner.plan.sections import to_dict

    renderer, template_info = None, {"name": None, "origin": None}
    if plan.data.stage != "pt":
        template_info["warnings"] = refuse_bad_template(plan, tok)
        template = resolve_template(to_dict(plan.data.template), tok)
        renderer = Renderer.for_tokenizer(template, tok)
        template_info.update(name=template.name, origin=template.origin)
    return renderer, template_info


def encode_split(plan, split: str, items: list, tok, renderer, progress: bool):
    """(datasets.Dataset, statistics) of one split's rows: tokenized, length policy, packed."""
    import datasets

    from runner.data.parallel import tokenize_parallel

    encoded = tokenize_parallel(plan, items, tok, renderer, progress)
    columns, part = encoded_columns(plan, encoded)
    if not columns[next(iter(columns))]:
        raise UserError(f"no {split} samples are left after the length policy", where="sequence",
                        hint="see the counts of dropped rows; raise max_length or change truncation")
    return datasets.Dataset.from_dict(columns), part


def encode_vlm_split(plan, split: str, items: list, vlm: tuple, renderer, seq: dict):
    """encode_split for rows with images or videos: tokenized by the model's processor (one process)."""
    import datasets

    from runner.data.vlm_tokenize import tokenize_vlm

    family, processor = vlm
    encoded = tokenize_vlm(items, plan.data.stage, plan, processor, renderer, plan.data.template.train_on, seq, family)
    columns, part = encoded_columns(plan, encoded, pack_rows=False)  # PackedVisionCollator packs each micro batch
    if not columns[next(iter(columns))]:
        raise UserError(f"no {split} samples are left after the length policy", where="sequence",
                        hint="see the counts of dropped rows; raise max_length or change truncation")
    return datasets.Dataset.from_dict(columns), part


def encoded_columns(plan, encoded, pack_rows: bool = True) -> tuple[dict, dict]:
    """The training columns of tokenized rows (packed when the plan packs) and their statistics."""
    from runner.data.packing import pack
    from runner.data.stats import summarize

    stage, seq = plan.data.stage, plan.data.sequence
    part = summarize(encoded.columns, stage)
    part["rows_in"] = encoded.rows_in
    part["counts"] = dict(encoded.counts)
    part["template_refused_skipped"] = sum(encoded.skipped.values())
    if part["template_refused_skipped"]:
        part["counts"]["skipped_template_refused"] = part["template_refused_skipped"]
    columns = encoded.columns
    if pack_rows and seq.packing and stage in ("sft", "pt"):
        columns, part["packing"] = pack(columns, seq.max_length)
    return columns, part


def refuse_bad_template(plan, tokenizer) -> list[str]:
    """`runner lint --deep`'s template check, before anything is tokenized: its errors stop the run
    (UserError, exit 2); its warnings are returned."""
    from runner.data.checks import check_template

    found = check_template(plan, tokenizer)
    errors = [f[len("error: "):] for f in found if f.startswith("error: ")]
    if errors:
        raise UserError("\n  ".join(errors), where="template",
                        hint="`runner lint --deep CONFIG` runs this check without preparing the data")
    return [f.partition(": ")[2] for f in found if not f.startswith("error: ")]


def refuse_untrainable(plan, prepared: PreparedData) -> list[str]:
    """Stop (UserError, exit 2) a run whose prepared data would train nothing useful: most rows
    without a trained token or end-of-turn, or every sample's end-of-turn cut by truncation. The
    warnings (rows truncated or dropped above a threshold, end-of-turn tokens cut) are printed
    once, kept in the statistics (plan.json's launch.data_stats.warnings) and returned."""
    import os
    import sys

    from runner.data.stats import findings

    from runner.plan.sections import to_dict

    errors, warnings = findings(prepared.stats, to_dict(plan.data.sequence))
    prepared.stats["warnings"] = warnings
    if int(os.environ.get("RANK", "0") or 0) == 0:
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    if errors:
        raise UserError("\n  ".join(errors), where="datasets",
                        hint="`runner preprocess CONFIG --show 3` prints what trains in each row")
    return warnings


def eval_items(plan) -> list:
    """The eval split's rows before tokenizing (runner.data.tokenize.Item: the normalised row and
    its file:line), split as build_datasets splits them: eval_datasets, else val_size of the mixed
    training rows (same seed). Empty when the run has no eval split."""
    from runner.data.mixing import split_validation
    from runner.plan.sections import to_dict

    data = to_dict(plan.data)
    if data.get("eval_datasets"):
        return _load_items(data["eval_datasets"], data, mix=False)[0]
    train_items, _ = _load_items(data["datasets"], data, mix=True)
    return split_validation(train_items, data.get("val_size") or 0, data.get("seed", 0))[1]


def _load_items(entries, data, mix: bool):
    from runner.data.mixing import mix as mix_items
    from runner.data.readers import load_rows
    from runner.data.tokenize import Item

    system_default = (data.get("template") or {}).get("system_prompt")
    groups, ds_stats = [], []
    for entry in entries:
        entry = dict(entry)
        if entry.get("system") is None and system_default:
            entry["system"] = system_default
        loaded = load_rows(entry, need_answer=data.get("stage") != "grpo")  # grpo: prompts, answers optional
        policy = entry.get("on_bad_row", "error")
        items = [Item(row, origin, policy) for row, origin in zip(loaded.rows, loaded.origins)]
        groups.append((items, entry))
        ds_stats.append({"path": entry["path"], "format": entry.get("format", "alpaca"), "rows_read": loaded.rows_read,
                         "rows": len(items), "skipped": dict(loaded.skipped)})
    if mix:
        return mix_items(groups, data.get("seed", 0), data.get("shuffle", True)), ds_stats
    return mix_items(groups, data.get("seed", 0), shuffle=False), ds_stats
