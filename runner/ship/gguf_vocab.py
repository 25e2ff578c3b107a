"""The tokenizer in GGUF metadata (`tokenizer.ggml.*`): what llama.cpp tokenizes with.

Two sources. A base that was itself a GGUF file (the quickstart's SmolLM2) already holds the
vocabulary exactly as llama.cpp reads it, pre-tokenizer name included: those fields are copied.
Otherwise the Hugging Face tokenizer's tokenizer.json is translated: a byte-level BPE
(GPT-2 style, `gpt2` in GGUF) with its merges and the name of its pre-tokenizer, or a
SentencePiece-style BPE with byte fallback (Llama 2, Mistral, Gemma; `llama` in GGUF) with
scores that rank merges as its merge list does. A pre-tokenizer llama.cpp would not split the
same way is refused: the file would load and tokenize wrongly.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from runner.errors import UserError

# Byte-level pre-tokenizer split patterns and the name llama.cpp gives the same split.
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_NAMES = {_LLAMA3: "llama-bpe", _QWEN2: "qwen2"}

SPECIAL_IDS = {"bos": "bos_token_id", "eos": "eos_token_id", "unknown": "unk_token_id", "padding": "pad_token_id"}


def add_vocab(writer, tokenizer, n_vocab: int, source_gguf: Path | None) -> dict:
    """Write the tokenizer fields; returns {field: value} of what was written, for messages/tests."""
    fields = _from_gguf(source_gguf, tokenizer) if source_gguf else _from_tokenizer_json(tokenizer)
    # The run's own special tokens: what it trained with, whatever the source file said.
    for name, attr in SPECIAL_IDS.items():
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            fields[f"tokenizer.ggml.{name}_token_id"] = ("u32", int(tid))
    n_tokens = len(fields["tokenizer.ggml.tokens"][1])
    if n_tokens > n_vocab:
        raise UserError(f"the tokenizer has {n_tokens} tokens but the model's embedding only {n_vocab} rows",
                        where="tokenizer", hint="a tokenizer of another model was saved with this run")
    if n_tokens < n_vocab:  # embeddings padded past the vocabulary: llama.cpp needs a token per row
        tokens, types = fields["tokenizer.ggml.tokens"][1], fields["tokenizer.ggml.token_type"][1]
        tokens += [f"[PAD{i}]".encode() for i in range(n_tokens, n_vocab)]
        types += [5] * (n_vocab - n_tokens)  # UNUSED
        if "tokenizer.ggml.scores" in fields:
            fields["tokenizer.ggml.scores"][1].extend([-1e9] * (n_vocab - n_tokens))
    _write(writer, fields)
    return fields


def _write(writer, fields: dict) -> None:
    import gguf

    kinds = {"u32": gguf.GGUFValueType.UINT32, "bool": gguf.GGUFValueType.BOOL, "str": gguf.GGUFValueType.STRING,
             "i32": gguf.GGUFValueType.INT32, "f32": gguf.GGUFValueType.FLOAT32}
    for key, (kind, value) in fields.items():
        if kind.startswith("[]"):
            writer.add_key_value(key, value, gguf.GGUFValueType.ARRAY, sub_type=kinds[kind[2:]])
        else:
            writer.add_key_value(key, value, kinds[kind])


def _from_gguf(path: Path, tokenizer) -> dict:
    import gguf

    names = {gguf.GGUFValueType.UINT32: "u32", gguf.GGUFValueType.BOOL: "bool", gguf.GGUFValueType.STRING: "str",
             gguf.GGUFValueType.INT32: "i32", gguf.GGUFValueType.FLOAT32: "f32"}
    reader = gguf.GGUFReader(path)
    fields = {}
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == gguf.GGUFValueType.STRING:  # bytes as stored: not every token is valid UTF-8
                value = [bytes(field.parts[i]) for i in field.data]
            else:
                value = [v.item() if hasattr(v, "item") else v for v in field.contents()]
            fields[key] = ("[]" + names[sub], value)
        else:
            fields[key] = (names[field.types[0]], field.contents())
    tokens = fields.get("tokenizer.ggml.tokens", ("", []))[1]
    if len(tokens) != len(tokenizer):
        raise UserError(f"the base GGUF file {path.name} has {len(tokens)} tokens but the run's tokenizer has "
                        f"{len(tokenizer)}", where=str(path),
                        hint="the run added tokens to the vocabulary; export from a Hugging Face base model instead")
    return fields


def _from_tokenizer_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise UserError("the run's tokenizer is not a tokenizers (fast) tokenizer; GGUF export reads tokenizer.json",
                        where="tokenizer")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise UserError(f"cannot export a {model.get('type')} tokenizer to GGUF (runner writes BPE vocabularies)",
                        where="tokenizer", hint="merge the run (runner merge) and use llama.cpp's converter")
    vocab = dict(model["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    for content, token in added.items():
        vocab.setdefault(content, token["id"])
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise UserError("the tokenizer's token ids are not contiguous", where="tokenizer")
    tokens = [t for t, _ in by_id]
    pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    # GGUF stores a merge as "left right"; a space inside a part is written as U+0120, as llama.cpp reads it.
    merges = [" ".join(part.replace(" ", "\u0120") for part in pair) for pair in pairs]
    types = []
    for text in tokens:
        token = added.get(text)
        types.append(1 if token is None else 3 if token.get("special") else 4)  # NORMAL, CONTROL, USER_DEFINED
    fields = {"tokenizer.ggml.add_bos_token": ("bool", _adds(tokenizer, "bos")),
              "tokenizer.ggml.add_eos_token": ("bool", _adds(tokenizer, "eos"))}
    if model.get("byte_fallback"):
        fields.update(_spm_fields(spec, tokens, types, pairs))
    else:
        fields.update(_bpe_fields(spec, tokens, types, merges))
    return fields


def _adds(tokenizer, which: str) -> bool:
    tid = getattr(tokenizer, f"{which}_token_id", None)
    ids = tokenizer("a")["input_ids"]
    return tid is not None and bool(ids) and ids[0 if which == "bos" else -1] == tid


def _bpe_fields(spec: dict, tokens, types, merges) -> dict:
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise UserError("the tokenizer is a BPE without byte fallback and without a byte-level decoder; "
                        "llama.cpp has no matching vocabulary type", where="tokenizer")
    return {"tokenizer.ggml.model": ("str", "gpt2"), "tokenizer.ggml.pre": ("str", pre_tokenizer_name(spec)),
            "tokenizer.ggml.tokens": ("[]str", tokens), "tokenizer.ggml.token_type": ("[]i32", types),
            "tokenizer.ggml.merges": ("[]str", merges)}


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for the way this tokenizer splits text before BPE."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if (spec.get("normalizer") or None) is None and kinds[-1:] == ["ByteLevel"]:
        last = steps[-1]
        if kinds == ["ByteLevel"] and last.get("use_regex", True) and not last.get("add_prefix_space"):
            return "gpt-2"
        if (kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and last.get("use_regex", True)
                and not last.get("add_prefix_space")):
            return "smollm"
        if kinds == ["Split", "ByteLevel"] and not last.get("use_regex", True):
            pattern = steps[0].get("pattern", {}).get("Regex")
            if pattern in SPLIT_NAMES and steps[0].get("behavior") == "Isolated":
                return SPLIT_NAMES[pattern]
    raise UserError(f"the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) is not one runner can name "
                    "for llama.cpp; the GGUF file would split text differently than the model was trained",
                    where="tokenizer", hint="known: GPT-2, Llama 3, Qwen2, SmolLM byte-level splits; merge the run "
                                            "(runner merge) and use llama.cpp's converter for others")


def _spm_fields(spec: dict, tokens, types, pairs) -> dict:
    """SentencePiece BPE as llama.cpp's `llama` vocabulary: it merges the adjacent pair whose
    result scores highest, so a token's score is minus the rank of the first merge making it."""
    rank = {}
    for i, (left, right) in enumerate(pairs):
        rank.setdefault(left + right, i)
    unk = spec["model"].get("unk_token")
    scores, out_types = [], []
    for text, kind in zip(tokens, types):
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            kind = 6  # BYTE
        elif text == unk:
            kind = 2  # UNKNOWN
        out_types.append(kind)
        scores.append(-float(rank[text]) if text in rank else (0.0 if kind == 1 else -1000.0))
    normalizer = json.dumps(spec.get("normalizer") or {}) + json.dumps(spec.get("pre_tokenizer") or {})
    prepends = '"Prepend"' in normalizer or '"prepend_scheme": "always"' in normalizer or \
               '"add_prefix_space": true' in normalizer
    return {"tokenizer.ggml.model": ("str", "llama"), "tokenizer.ggml.pre": ("str", "default"),
            "tokenizer.ggml.tokens": ("[]str", tokens), "tokenizer.ggml.token_type": ("[]i32", out_types),
            "tokenizer.ggml.scores": ("[]f32", scores), "tokenizer.ggml.add_space_prefix": ("bool", prepends)}
