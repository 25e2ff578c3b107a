"""Byte-level BPE tokenizers run through tiktoken: the same token ids and offsets as the Rust
`tokenizers` library, in under a third of its time on two cores (bench/results/preprocess.md).

Only where the two are the same algorithm, which is decided from tokenizer.json before any text is
seen (`why_not`, `_merges_make_every_entry`): a BPE model over bytes with every merge's result
ranked in merge order, every entry made by the merges alone, no normalizer, one regex split, added
tokens that split the text as they are, no truncation or padding. Then ASCII texts only: for them a
token's characters are its bytes, so its offsets (and the ByteLevel post-processor's trimming of
spaces) follow from the bytes alone; any other text goes to `tokenizers`. Every batch is checked:
each text's tokens must hold all its bytes, and a spread of its texts is encoded by both, ids and
offsets compared. One difference sends the rest of the run to `tokenizers`, with a warning.
"""

from __future__ import annotations

import bisect
import importlib.util
import json
import os
import re
import sys
import weakref
from itertools import accumulate, chain

GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CHECKED_PER_BATCH = 8
MIN_TEXTS_PER_THREAD = 32
# At ~0.1 ms saved per text on two cores, setting up pays from about this many texts on.
MIN_TEXTS_FOR_SETUP = 4096
_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Texts tokenized by tiktoken so far: tests prove the fast path ran.
TEXTS_ENCODED = 0
_WHITESPACE = set(" \t\n\x0b\x0c\r")  # Rust's char::is_whitespace on ASCII (Python's isspace adds \x1c-\x1f)


def byte_chars() -> dict[int, str]:
    """GPT-2's map of bytes to printable characters (the byte-level alphabet of tokenizer.json)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + n) for n, b in enumerate(extra)}}


def engine_for(tokenizer, texts: int | None = None):
    """The FastBPE for a transformers tokenizer, or None (no tiktoken, or not the same algorithm).
    `texts`: how many texts are about to be tokenized; fewer than MIN_TEXTS_FOR_SETUP do not pay
    for setting the engine up (~0.4 s: reading tokenizer.json, the checks, tiktoken's tables)."""
    if os.environ.get("RUNNER_TIKTOKEN", "1") == "0" or not getattr(tokenizer, "is_fast", False):
        return None
    try:
        cached = _ENGINES.get(tokenizer)
    except TypeError:
        return None
    size = len(tokenizer)
    if cached is not None and cached[0] == size:  # added tokens since: build again
        return cached[1]
    if texts is not None and texts < MIN_TEXTS_FOR_SETUP:
        return None
    engine = None
    if importlib.util.find_spec("tiktoken") is not None:
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        if why_not(spec) is None and _merges_make_every_entry(tokenizer.backend_tokenizer, spec):
            try:
                engine = FastBPE(spec, tokenizer.backend_tokenizer)
            except ValueError:  # a split regex tiktoken's engine does not take
                engine = None
    _ENGINES[tokenizer] = (size, engine)
    return engine


def _pre_split(pre) -> str | None:
    """The regex of a byte-level pre-tokenizer that splits once, or None."""
    if pre is None:
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return GPT2_SPLIT
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return None
    split, level = steps
    pattern = split.get("pattern") or {}
    if (split.get("type") == "Split" and "Regex" in pattern and split.get("behavior") == "Isolated"
            and not split.get("invert") and level.get("type") == "ByteLevel"
            and not level.get("use_regex", True) and not level.get("add_prefix_space")):
        return pattern["Regex"]
    return None


def _post_steps(post) -> list:
    """The post-processor's steps: none, one, or a Sequence's."""
    if post is None:
        return []
    return post.get("processors", [post]) if post.get("type") == "Sequence" else [post]


def _around(post) -> tuple[list, list] | None:
    """The ids a TemplateProcessing step puts before and after a single text when special tokens are
    added; None when that is not just fixed ids around the text."""
    before, after = [], []
    for step in _post_steps(post):
        if step.get("type") != "TemplateProcessing":
            continue
        parts, seen = (before, after), 0
        for piece in step.get("single") or []:
            if "Sequence" in piece:
                seen += 1
            elif "SpecialToken" in piece and seen <= 1:
                parts[seen].extend(step["special_tokens"][piece["SpecialToken"]["id"]]["ids"])
            else:
                return None
        if seen != 1:
            return None
    return before, after


def _trimming(post) -> tuple[bool, bool] | None:
    """(trim_offsets, add_prefix_space) of the post-processor's ByteLevel step; None when a step
    could change the ids or offsets in other ways."""
    trim = (False, False)
    for step in _post_steps(post):
        if step.get("type") == "ByteLevel":
            trim = (bool(step.get("trim_offsets")), bool(step.get("add_prefix_space")))
        elif step.get("type") != "TemplateProcessing":  # adds tokens only with add_special_tokens
            return None
    return trim


def why_not(spec: dict) -> str | None:
    """Why tiktoken would not tokenize like this tokenizer.json, or None when it would."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback"):
        return "not a byte-level BPE model"
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return "word prefixes or suffixes"
    if spec.get("normalizer") is not None:
        return "a normalizer"
    if spec.get("truncation") or spec.get("padding"):
        return "truncation or padding in tokenizer.json"
    if _pre_split(spec.get("pre_tokenizer")) is None:
        return "a pre-tokenizer other than one regex split into bytes"
    if _trimming(spec.get("post_processor")) is None:
        return "a post-processor that changes offsets"
    added = spec.get("added_tokens") or []
    if any(a.get("lstrip") or a.get("rstrip") or a.get("single_word") for a in added):
        return "added tokens that strip spaces or match whole words only"
    contents = sorted(a["content"] for a in added)
    if any(not c or b.startswith(c) for c, b in zip(contents, contents[1:])) or contents[:1] == [""]:
        return "an added token that begins another (tiktoken matches the first, tokenizers the longest)"
    vocab, merges = model.get("vocab") or {}, model.get("merges") or []
    added_ids = {a["id"] for a in added}
    chars = byte_chars()
    alphabet = set(chars.values())
    if not all(chars[b] in vocab for b in range(32, 127)):  # only ASCII texts come here
        return "a vocabulary without every printable ASCII character"
    if not all(set(t) <= alphabet for t, i in vocab.items() if i not in added_ids):
        return "a vocabulary that is not over the 256 byte-level characters"
    made, last = set(), -1
    for merge in merges:
        a, b = merge if isinstance(merge, list) else merge.split(" ", 1)
        rank = vocab.get(a + b)
        if rank is None or rank <= last:  # tiktoken merges by the rank of the result
            return "merges not in the order of their results' ids"
        last = rank
        made.add(a + b)
    if any(len(t) > 1 and t not in made and i not in added_ids for t, i in vocab.items()):
        return "vocabulary entries no merge makes"
    return None


def _merges_make_every_entry(backend, spec: dict) -> bool:
    """Each vocabulary entry, tokenized alone by the tokenizer's own BPE, is itself. tiktoken takes
    a piece that is a vocabulary entry whole; `tokenizers` does so only with ignore_merges, and
    otherwise merges its way there (~0.1 s for 49k entries)."""
    if spec["model"].get("ignore_merges"):
        return True
    added_ids = {a["id"] for a in spec.get("added_tokens") or []}
    tokenize = backend.model.tokenize
    return all(len(t) == 1 or i in added_ids or [x.id for x in tokenize(t)] == [i]
               for t, i in spec["model"]["vocab"].items())


class FastBPE:
    """tiktoken's Encoding for one tokenizer.json, with what offsets need: each id's length in
    bytes and its leading and trailing spaces (as the ByteLevel post-processor counts them)."""

    def __init__(self, spec: dict, backend):
        import numpy as np
        import tiktoken

        to_byte = {c: b for b, c in byte_chars().items()}
        added = {a["content"]: a["id"] for a in spec.get("added_tokens") or []}
        added_ids = set(added.values())
        ranks = {bytes(to_byte[c] for c in t): i for t, i in spec["model"]["vocab"].items() if i not in added_ids}
        self.encoding = tiktoken.Encoding("runner", pat_str=_pre_split(spec["pre_tokenizer"]),
                                          mergeable_ranks=ranks, special_tokens=added)
        size = max([*ranks.values(), *added_ids]) + 1
        self.length, self.lead, self.trail = [0] * size, [0] * size, [0] * size
        for token, i in ranks.items():
            self.length[i] = len(token)
            self.lead[i] = len(token) - len(token.lstrip(b" "))
            self.trail[i] = len(token) - len(token.rstrip(b" "))
        for content, i in added.items():
            self.length[i] = len(content.encode())
            self.lead[i] = len(content) - len(_lstrip(content))
            self.trail[i] = len(content) - len(_lstrip(content[::-1]))
        self.trim, self.prefix_space = _trimming(spec.get("post_processor"))
        self.around = _around(spec.get("post_processor"))  # ids added with add_special_tokens=True
        # ASCII control characters the vocabulary lacks (tokenizers drops them): such texts go there
        lacking = "".join(chr(b) for b in range(128) if bytes([b]) not in ranks)
        self.lacking = re.compile("[" + re.escape(lacking) + "]") if lacking else None
        self.backend = backend
        self.trusted = True
        self._pool, self._pid = None, os.getpid()
        self._lengths = np.asarray(self.length, dtype=np.int64)
        self.threads = 1 if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("0", "false", "off") \
            else max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))

    def encode(self, texts: list) -> list:
        """Token ids of each text, the texts shared out over `threads` threads (tiktoken lets go of
        the GIL while it encodes; its own encode_batch hands out one text at a time)."""
        if self.threads == 1 or len(texts) < 2 * MIN_TEXTS_PER_THREAD or os.getpid() != self._pid:
            return self._encode_all(texts)  # a forked worker (data.num_proc) has no pool threads: one each
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="runner-tiktoken")
        parts = min(self.threads, len(texts) // MIN_TEXTS_PER_THREAD)
        bounds = [len(texts) * k // parts for k in range(parts + 1)]
        futures = [self._pool.submit(self._encode_all, texts[a:b]) for a, b in zip(bounds, bounds[1:])]
        return [ids for f in futures for ids in f.result()]

    def _encode_all(self, texts: list) -> list:
        encode = self.encoding.encode
        return [encode(t, allowed_special="all") for t in texts]

    def ends(self, rows: list, offsets: bool):
        """(each row's byte count, each row's token end offsets or None), all rows at once."""
        import numpy as np

        sizes = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(sizes.sum()))
        cum = np.concatenate([[0], np.cumsum(self._lengths[flat])])
        starts = np.cumsum(sizes) - sizes
        totals = (cum[starts + sizes] - cum[starts]).tolist()
        if not offsets:
            return totals, [None] * len(rows)
        every = (cum[1:] - np.repeat(cum[starts], sizes)).tolist()
        return totals, [every[a:a + n] for a, n in zip(starts.tolist(), sizes.tolist())]

    def agrees(self, texts: list, ids: list) -> bool:
        """`tokenizers` gives the same ids and offsets for a spread of these ASCII texts."""
        step = max(1, len(texts) // CHECKED_PER_BATCH)
        picked = list(range(0, len(texts), step))[:CHECKED_PER_BATCH]
        reference = self.backend.encode_batch([texts[i] for i in picked], add_special_tokens=False)
        for i, ref in zip(picked, reference):
            mine = ByteEncoding(ids[i], self)
            if ref.ids != ids[i] or ref.offsets != [mine.token_to_chars(t) for t in range(len(ids[i]))]:
                return False
        return True

    def distrust(self) -> None:
        self.trusted = False
        print("warning: tiktoken and the tokenizer differ on a text of this data; tokenizing the rest with the "
              "tokenizer itself (report it, with the tokenizer, to runner)", file=sys.stderr)


def _lstrip(text: str) -> str:
    i = 0
    while i < len(text) and (text[i] in _WHITESPACE or text[i] == "\u0120" or (text[i] > "\x7f" and text[i].isspace())):
        i += 1
    return text[i:]


class ByteEncoding:
    """The two questions runner asks of a `tokenizers.Encoding` (char_to_token, token_to_chars),
    answered for an ASCII text from its ids: each token's characters are its bytes. `ends`: the
    token end offsets (FastBPE.ends)."""

    __slots__ = ("ids", "engine", "ends")

    def __init__(self, ids: list, engine: FastBPE, ends: list | None = None):
        self.ids, self.engine = ids, engine
        self.ends = ends if ends is not None else list(accumulate(map(engine.length.__getitem__, ids)))

    def token_to_chars(self, t: int) -> tuple[int, int]:
        start, end = (self.ends[t - 1] if t else 0), self.ends[t]
        e = self.engine
        if not e.trim:
            return start, end
        token = self.ids[t]
        lead, trail = e.lead[token], e.trail[token]
        if lead and not ((t == 0 or start == 0) and e.prefix_space and lead == 1):
            start = min(start + lead, end)
        if trail and end >= trail:
            end = max(end - trail, start)
        return start, end

    def char_to_token(self, pos: int):
        t = bisect.bisect_right(self.ends, pos)
        if t >= len(self.ids):
            return None
        start, end = self.token_to_chars(t)
        return t if start <= pos < end else None


def encode_batch(engine: FastBPE, texts: list, offsets: bool, add_special_tokens: bool = False):
    """(ids, encodings) of the texts: ASCII ones through tiktoken, the others through `tokenizers`;
    None when the batch's check finds a difference, or when special tokens are to be added in a
    way the engine does not know (the caller tokenizes it all the usual way)."""
    if add_special_tokens and (offsets or engine.around is None):
        return None
    lacking = engine.lacking
    fast = [i for i, t in enumerate(texts) if t.isascii() and (lacking is None or not lacking.search(t))]
    global TEXTS_ENCODED
    fast_ids = engine.encode([texts[i] for i in fast])
    TEXTS_ENCODED += len(fast)
    totals, row_ends = engine.ends(fast_ids, offsets)
    # Every byte of a text is in its tokens: a split regex that skips characters (tiktoken drops
    # what it does not match, tokenizers keeps it) shows here, on any text.
    if any(n != len(texts[i]) for i, n in zip(fast, totals)) or not engine.agrees([texts[i] for i in fast], fast_ids):
        engine.distrust()
        return None
    ids, encodings = [None] * len(texts), [None] * len(texts)
    before, after = engine.around if add_special_tokens else ([], [])
    for i, row, ends in zip(fast, fast_ids, row_ends):
        ids[i] = before + row + after if before or after else row
        if offsets:
            encodings[i] = ByteEncoding(row, engine, ends)
    slow = [i for i, t in enumerate(texts) if ids[i] is None]
    if slow:
        for i, e in zip(slow, engine.backend.encode_batch([texts[i] for i in slow],
                                                          add_special_tokens=add_special_tokens)):
            ids[i], encodings[i] = e.ids, e
    return ids, encodings
