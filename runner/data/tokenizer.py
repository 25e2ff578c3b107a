"""Load the run's tokenizer: special-token overrides applied, a pad token set, and the chat
template used for training attached (so that saving the tokenizer keeps it)."""

from __future__ import annotations

import os

from runner.errors import UserError

# Incremented on every load: tests prove that a data-cache hit loads no tokenizer.
LOAD_COUNT = 0


def load_tokenizer(plan, attach_template: bool = True):
    global LOAD_COUNT
    from transformers import AutoTokenizer

    spec = plan.data.tokenizer
    kwargs = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    if spec.gguf_file:
        kwargs["gguf_file"] = spec.gguf_file
    if plan.secret("model.token"):
        kwargs["token"] = plan.secret("model.token")
    path = spec.path
    if not os.path.isdir(path) and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        kwargs["local_files_only"] = True
    LOAD_COUNT += 1
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **{k: v for k, v in kwargs.items() if v is not None})
    except (OSError, ValueError) as e:
        from runner.plan.remote_code import load_error

        own_folder = spec.path != plan.model.path
        found = load_error(path, e, "model.tokenizer" if own_folder else "model.path")
        if found is not None:
            raise found from None
        raise UserError(f"cannot load the tokenizer from {path}: {e}", where="model.path",
                        hint="check the path, or that the hub is reachable for a hub id") from None
    from runner.plan.sections import to_dict

    apply_special_tokens(tokenizer, to_dict(plan.data.special_tokens))
    if attach_template and plan.data.stage != "pt":
        from runner.data.templates import resolve_template

        tokenizer.chat_template = resolve_template(to_dict(plan.data.template), tokenizer).source
    return tokenizer


def apply_special_tokens(tokenizer, overrides: dict) -> list[str]:
    """Apply pad/eos/bos overrides and extra tokens; returns the tokens new to the vocabulary
    (the model's embeddings must grow by that many)."""
    vocab = tokenizer.get_vocab()
    added = [t for t in overrides.get("add") or [] if t not in vocab]
    if overrides.get("add"):
        tokenizer.add_tokens(list(overrides["add"]), special_tokens=True)
    for key in ("bos_token", "eos_token", "pad_token"):
        value = overrides.get(key)
        if value:
            if value not in vocab and value not in added:
                added.append(value)
            tokenizer.add_special_tokens({key: value})
    if tokenizer.pad_token is None:
        # Padding is masked out by the collator (attention_mask / labels -100), so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return added
