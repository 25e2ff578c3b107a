"""Normalised rows -> token ids and labels for each training stage, with the length policy.

sft:  input_ids, labels (-100 where no loss; the first token is always -100 so that packing
      never trains across a sample boundary).
pt:   input_ids, labels (= input_ids), the document followed by EOS.
dpo / orpo / simpo / cpo / rm: prompt_input_ids, chosen_input_ids, rejected_input_ids (completions carry their
      end-of-turn token).
kto:  prompt_input_ids, completion_input_ids, label.
grpo: prompt, reference, prompt_input_ids (runner.data.prompts).
"""

from __future__ import annotations

import bisect
import sys
from collections import Counter
from dataclasses import dataclass, field

from runner.data import fastbpe
from runner.data.bounded import encode_bounded, max_token_chars
from runner.data.formats import RowError
from runner.data.render import Renderer, RenderTimeout, TemplateRenderError, time_bound
from runner.errors import DataError, UserError

IGNORE = -100
BATCH = 512
CHUNK = 8192  # rows encoded at a time: their Rust encodings (offsets, tokens) are the memory
SHOWN = 5

# Incremented each time rows are tokenized: tests prove that a cache hit tokenizes nothing.
TOKENIZE_CALLS = 0


@dataclass
class Item:
    """One row on its way through the pipeline."""

    row: dict
    origin: str
    policy: str = "error"   # the dataset's on_bad_row


@dataclass
class Encoded:
    columns: dict
    origins: list
    counts: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    rows_in: int = 0   # samples that reached the length policy


def tokenize_items(items: list[Item], stage: str, tokenizer, renderer: Renderer | None, template_cfg: dict,
                   sequence_cfg: dict, progress: bool = True) -> Encoded:
    global TOKENIZE_CALLS
    TOKENIZE_CALLS += 1
    stage = {"orpo": "dpo", "simpo": "dpo", "cpo": "dpo", "rm": "dpo"}.get(stage, stage)
    if stage == "grpo":
        from runner.data.prompts import grpo_rows

        return grpo_rows(items, tokenizer, renderer, sequence_cfg, progress)
    builder = {"sft": _sft, "pt": _pt, "dpo": _dpo, "kto": _kto}[stage]
    return builder(items, tokenizer, renderer, template_cfg.get("train_on", "assistant"), sequence_cfg, progress)


# ---- rendering, with the bad-row policy for rows the template refuses ---------------------------
class _Refused:
    def __init__(self):
        self.errors, self.total, self.skipped = [], 0, Counter()

    def add(self, item: Item, error: Exception):
        if item.policy == "skip":
            self.skipped["template refused"] += 1
            return
        self.total += 1
        if len(self.errors) < SHOWN:
            self.errors.append(f"{item.origin}: {error}")

    def raise_if_any(self):
        if self.total:
            more = f"\n  ... and {self.total - len(self.errors)} more" if self.total > len(self.errors) else ""
            raise DataError(f"{self.total} row(s) the chat template cannot render:\n  " + "\n  ".join(self.errors)
                            + more, where=self.errors[0].split(": ", 1)[0],
                            hint="fix the rows, pick a template that accepts them, or set on_bad_row: skip")


def _progress(iterable, total, enabled, desc):
    if not enabled or total < 2000:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, unit="row")


def _render_all(items, render_one, progress, renderer, desc="rendering", quick=None):
    """`quick(row)`: the row's (result, notes) without a template rendering, or None."""
    refused, kept, out, notes = _Refused(), [], [], Counter()
    for item in _progress(items, len(items), progress, desc):
        try:
            done = quick(item.row) if quick is not None else None
            if done is not None:
                result, row_notes = done
            else:
                with time_bound(renderer.name):  # every rendering of the row within one bound
                    result, row_notes = render_one(item.row)
        except (TemplateRenderError, RowError) as e:
            refused.add(item, e)
            continue
        except RenderTimeout as e:  # the template, not the row, is the likely culprit: never skipped
            raise DataError(f"{e} this row", where=item.origin,
                            hint="a loop in the chat template that does not end, or one that grows with the row; "
                                 "fix the template (template.jinja) or the row") from None
        notes.update(set(row_notes))
        kept.append(item)
        out.append(result)
    refused.raise_if_any()
    return kept, out, notes, refused.skipped


# Length policies that keep a prefix of a long sample: the rest of a long text need not be tokenized.
_CUTTABLE = ("truncate", "drop", "error")


def _encode_bounded(tokenizer, texts, seq, offsets=False, add_special_tokens=False, keep="start", token_chars=None):
    """_encode, with each text certainly longer than max_length cut first (see bounded.py)."""
    limit = seq.get("max_length", 2048) if seq.get("truncation", "truncate") in _CUTTABLE else None
    return encode_bounded(lambda chunk: _encode(tokenizer, chunk, offsets, add_special_tokens), texts, limit,
                          (token_chars or max_token_chars(tokenizer)) if limit else 1, keep)


def _encode(tokenizer, texts, offsets=False, add_special_tokens=False):
    """Token ids, and (with offsets=True) per-row offset lookups for the loss mask."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    engine = fastbpe.engine_for(tokenizer, len(texts)) if backend is not None else None
    ids, offs = [], []
    for i in range(0, len(texts), BATCH):
        if backend is not None:  # the Rust tokenizer directly (or tiktoken, where it is the same: fastbpe)
            batch = texts[i:i + BATCH]
            fast = fastbpe.encode_batch(engine, batch, offsets, add_special_tokens) if engine and engine.trusted else None
            encodings = fast[1] if fast else backend.encode_batch(batch, add_special_tokens=add_special_tokens)
            ids += fast[0] if fast else [e.ids for e in encodings]
            offs += [EncodingOffsets(e) for e in encodings] if offsets else []  # no per-token Python offsets
            continue
        enc = tokenizer(texts[i:i + BATCH], add_special_tokens=add_special_tokens,
                        return_offsets_mapping=offsets, return_attention_mask=False)
        ids += enc["input_ids"]
        if offsets:
            offs += [ListOffsets(o) for o in enc["offset_mapping"]]
    return ids, offs


class ListOffsets:
    """Token character offsets as a list of (start, end), ascending."""

    def __init__(self, offsets: list):
        self.offsets = offsets

    def ranges(self, spans: list) -> list[tuple[int, int]]:
        """For each character span, the [first, last + 1) tokens overlapping it."""
        starts = [s for s, _ in self.offsets]
        ends = [max(e, s + 1) for s, e in self.offsets]
        return [(bisect.bisect_right(ends, s), bisect.bisect_left(starts, e)) for s, e in spans]

    def chars(self, t: int) -> tuple[int, int]:
        return self.offsets[t]


class EncodingOffsets:
    """The same, asked of a Rust `Encoding` character by character: converting every token's
    offsets to Python costs more than tokenizing."""

    def __init__(self, encoding):
        self.encoding = encoding

    def _token_at(self, pos: int, stop: int, step: int):
        while pos != stop:
            t = self.encoding.char_to_token(pos)
            if t is not None:
                return t
            pos += step
        return None

    def ranges(self, spans: list) -> list[tuple[int, int]]:
        out = []
        for s, e in spans:
            first, last = self._token_at(s, e, 1), self._token_at(e - 1, s - 1, -1)
            out.append((first, last + 1) if first is not None and last is not None and last >= first else (0, 0))
        return out

    def chars(self, t: int) -> tuple[int, int]:
        return self.encoding.token_to_chars(t)


# ---- sft -----------------------------------------------------------------------------------------
def _sft(items, tokenizer, renderer, train_on, seq, progress):
    from runner.data.shapes import ShapeMismatch, quick_renderer

    def render_one(row):
        messages, tools, notes = renderer.prepare(row["messages"], row.get("tools"))
        return renderer.spans(messages, tools, train_on), notes

    try:  # by conversation shape where the template allows it, else row by row (runner.data.shapes)
        kept, rendered, notes, skipped = _render_all(items, render_one, progress, renderer,
                                                     quick=quick_renderer(renderer, train_on))
    except ShapeMismatch as e:
        print(f"warning: {e}; rendering every row with the template", file=sys.stderr)
        kept, rendered, notes, skipped = _render_all(items, render_one, progress, renderer)
    end_ids = end_of_turn_ids(tokenizer)
    counts, samples, cuts, token_chars = Counter(notes), [], [], max_token_chars(tokenizer)
    for at in range(0, len(rendered), CHUNK):  # a chunk's token offsets are dropped before the next is encoded
        chunk = rendered[at:at + CHUNK]
        ids_list, offsets_list, chunk_cuts = _encode_bounded(tokenizer, [t for t, _ in chunk], seq, True,
                                                           token_chars=token_chars)
        cuts += chunk_cuts
        for (text, spans), ids, offsets, cut in zip(chunk, ids_list, offsets_list, chunk_cuts):
            if cut is not None:  # spans past the cut are beyond max_length: truncation decides about them
                spans = [(a, min(b, cut)) for a, b in spans if a < cut]
            labels = labels_from_spans(ids, offsets, spans)
            whole = [s for s in spans if cut is None or s[1] < cut]
            if train_on != "all" and not eot_trained(ids, offsets, labels, whole, text, end_ids):
                counts["eot_not_trained"] += 1
            samples.append((ids, labels))
    return _apply_length_policy(samples, kept, seq, counts, skipped, cuts=cuts)


def labels_from_spans(ids: list, offsets, spans: list) -> list:
    """A token carries loss when its characters overlap a trained span (a token that BPE merged
    across the boundary counts as trained). `offsets`: a list of (start, end) or *Offsets."""
    offsets = ListOffsets(offsets) if isinstance(offsets, list) else offsets
    labels = [IGNORE] * len(ids)
    for a, b in offsets.ranges(spans):
        labels[a:b] = ids[a:b]
    if labels:
        labels[0] = IGNORE
    return labels


def end_of_turn_ids(tokenizer) -> set:
    ids = set(tokenizer.get_added_vocab().values())
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def eot_trained(ids, offsets, labels, spans, text, end_ids) -> bool:
    """Each trained span ends (whitespace aside) on a trained special token: the model learns to stop."""
    offsets = ListOffsets(offsets) if isinstance(offsets, list) else offsets
    for a, b in offsets.ranges(spans):
        last = next((t for t in range(b - 1, a - 1, -1)
                     if labels[t] != IGNORE and text[slice(*offsets.chars(t))].strip()), None)
        if last is None or ids[last] not in end_ids:
            return False
    return True


def _apply_length_policy(samples, kept, seq, counts, skipped, trained_key=True, cuts=None) -> Encoded:
    max_length, policy = seq.get("max_length", 2048), seq.get("truncation", "truncate")
    cuts = cuts or [None] * len(samples)
    too_long = [(kept[i].origin, f"{len(ids)} tokens" if cuts[i] is None else f"over {len(ids)} tokens")
                for i, (ids, _) in enumerate(samples) if len(ids) > max_length]
    if too_long and policy == "error":
        shown = "\n  ".join(f"{o}: {n}" for o, n in too_long[:SHOWN])
        raise UserError(f"{len(too_long)} sample(s) longer than sequence.max_length={max_length}:\n  {shown}",
                        where=too_long[0][0], hint="raise max_length, or set sequence.truncation: truncate | drop")
    input_ids, labels, origins = [], [], []
    for (ids, labs), item in zip(samples, kept):
        pieces, end_cut = [(ids, labs)], False
        if len(ids) > max_length:
            if policy == "drop":
                counts["dropped_too_long"] += 1
                continue
            if policy == "split":
                pieces = split_sample(ids, labs, max_length)
                counts["split"] += 1
            else:
                pieces = [(ids[:max_length], labs[:max_length])]
                counts["truncated"] += 1
                end_cut = any(x != IGNORE for x in labs[max_length:])  # a trained turn loses its end
        for ids, labs in pieces:
            if trained_key and labs.count(IGNORE) == len(labs):
                counts["dropped_no_trained_tokens"] += 1
                continue
            if end_cut:
                counts["eot_cut"] += 1
            input_ids.append(ids)
            labels.append(labs)
            origins.append(item.origin)
    return Encoded({"input_ids": input_ids, "labels": labels}, origins, counts, skipped, len(samples))


def split_sample(ids: list, labels: list, max_length: int) -> list[tuple[list, list]]:
    """A long sample cut into consecutive pieces of at most max_length tokens (continued pretraining:
    nothing is thrown away). A piece's first token has no context inside its own row, so its label is
    -100, as every sample's first label already is."""
    pieces = []
    for start in range(0, len(ids), max_length):
        piece_labels = labels[start:start + max_length]
        if start:
            piece_labels = [IGNORE] + piece_labels[1:]
        pieces.append((ids[start:start + max_length], piece_labels))
    return pieces


# ---- pt ------------------------------------------------------------------------------------------
def _pt(items, tokenizer, renderer, train_on, seq, progress):
    texts = [item.row["text"] if "text" in item.row else _plain_text(item.row) for item in items]
    ids_list, _, cuts = _encode_bounded(tokenizer, texts, seq, add_special_tokens=True)
    eos = tokenizer.eos_token_id
    samples = []
    for ids in ids_list:
        ids = ids + ([eos] if eos is not None and (not ids or ids[-1] != eos) else [])
        samples.append((ids, [IGNORE] + ids[1:]))
    return _apply_length_policy(samples, items, seq, Counter(), Counter(), cuts=cuts)


def _plain_text(row) -> str:
    """Continued pretraining on a conversation dataset: its messages' text, one after another."""
    return "\n\n".join(m["content"] for m in row.get("messages", []) if m.get("content"))


# ---- preference ----------------------------------------------------------------------------------
def _prompt_and_completion(renderer, messages, tools, answer):
    conversation, tools, notes = renderer.prepare(messages + [answer], tools)
    text, spans = renderer.spans(conversation, tools, "last_assistant")
    start, end = spans[-1]
    return text[:start], text[start:end], notes


def _dpo(items, tokenizer, renderer, train_on, seq, progress):
    def render_one(row):
        prompt, chosen, notes = _prompt_and_completion(renderer, row["messages"], row.get("tools"), row["chosen"])
        prompt_r, rejected, notes_r = _prompt_and_completion(renderer, row["messages"], row.get("tools"),
                                                             row["rejected"])
        if prompt_r != prompt:
            raise TemplateRenderError("the template renders the prompt differently before chosen and rejected")
        return (prompt, chosen, rejected), notes + notes_r

    kept, rendered, notes, skipped = _render_all(items, render_one, progress, renderer)
    prompts, _, _ = _encode_bounded(tokenizer, [r[0] for r in rendered], seq, keep="end")
    chosen, _, _ = _encode_bounded(tokenizer, [r[1] for r in rendered], seq)
    rejected, _, _ = _encode_bounded(tokenizer, [r[2] for r in rendered], seq)
    counts = Counter(notes)
    columns = {"prompt_input_ids": [], "chosen_input_ids": [], "rejected_input_ids": []}
    origins = []
    for p, c, r, item in zip(prompts, chosen, rejected, kept):
        fitted = _fit_pair(p, [c, r], seq, counts, item.origin)
        if fitted is None:
            continue
        p, (c, r) = fitted
        columns["prompt_input_ids"].append(p)
        columns["chosen_input_ids"].append(c)
        columns["rejected_input_ids"].append(r)
        origins.append(item.origin)
    return Encoded(columns, origins, counts, skipped, len(kept))


def _kto(items, tokenizer, renderer, train_on, seq, progress):
    def render_one(row):
        prompt, completion, notes = _prompt_and_completion(renderer, row["messages"][:-1], row.get("tools"),
                                                           row["messages"][-1])
        return (prompt, completion, row["label"]), notes

    kept, rendered, notes, skipped = _render_all(items, render_one, progress, renderer)
    prompts, _, _ = _encode_bounded(tokenizer, [r[0] for r in rendered], seq, keep="end")
    completions, _, _ = _encode_bounded(tokenizer, [r[1] for r in rendered], seq)
    counts = Counter(notes)
    columns = {"prompt_input_ids": [], "completion_input_ids": [], "label": []}
    origins = []
    for p, c, (_, _, label), item in zip(prompts, completions, rendered, kept):
        fitted = _fit_pair(p, [c], seq, counts, item.origin)
        if fitted is None:
            continue
        p, (c,) = fitted
        columns["prompt_input_ids"].append(p)
        columns["completion_input_ids"].append(c)
        columns["label"].append(bool(label))
        origins.append(item.origin)
    return Encoded(columns, origins, counts, skipped, len(kept))


def _fit_pair(prompt, completions, seq, counts, origin):
    """Length policy for prompt + completion: keep the prompt's end and the completions' start."""
    max_length, policy = seq.get("max_length", 2048), seq.get("truncation", "truncate")
    longest = max(len(c) for c in completions)
    if len(prompt) + longest <= max_length:
        return prompt, completions
    if policy == "error":
        raise UserError(f"preference sample is {len(prompt) + longest} tokens or more, longer than "
                        f"sequence.max_length={max_length}", where=origin, hint="raise max_length, or set sequence.truncation")
    if policy == "drop":
        counts["dropped_too_long"] += 1
        return None
    counts["truncated"] += 1
    keep_prompt = max(max_length - longest, max_length // 2)
    prompt = prompt[-keep_prompt:] if len(prompt) > keep_prompt else prompt
    fitted = [c[: max_length - len(prompt)] for c in completions]
    if any(len(f) < len(c) for f, c in zip(fitted, completions)):  # a completion loses its end-of-turn
        counts["eot_cut"] += 1
    return prompt, fitted
