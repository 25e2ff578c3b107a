"""A small byte-level BPE tokenizer trained in-process (well under a second), for tests.

It has ChatML special tokens and a plain ChatML chat template, and saves as an ordinary Hugging Face
tokenizer directory, so `AutoTokenizer.from_pretrained(dir)` and `template: {name: tokenizer}` work.
Other tests import `tiny_tokenizer()` / `save_tiny_tokenizer(dir)`.
"""

from __future__ import annotations

import functools
from pathlib import Path

CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Varied English, code-ish and JSON-ish text so that merges cover what tests render.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world! How are you today?",
    "You are a helpful assistant. Answer the question briefly and politely.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    "Instruction: describe a process of making crepes. Response: mix flour, eggs and milk.",
    "system user assistant tool function call observation response input output",
    "1. First step\n2. Second step\n3. Third step\n\nThat is all, thank you.",
    "Cut the chicken into small pieces. Slice the bell peppers. Cook the rice.",
    "What is the capital of France? The capital of France is Paris.",
    "### Instruction:\n### Response:\n[INST] <<SYS>> <</SYS>> [/INST] USER: ASSISTANT:",
]


def _train(extra_special: tuple[str, ...] = (), vocab_size: int = 700):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = CHATML_SPECIALS + [t for t in extra_special if t not in CHATML_SPECIALS]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


@functools.lru_cache(maxsize=8)
def _cached(extra_special: tuple[str, ...]):
    return _train(extra_special)


def tiny_tokenizer(extra_special: tuple[str, ...] | list[str] = ()):
    """A fresh copy of the tiny tokenizer (training is cached; callers may mutate their copy)."""
    import copy

    return copy.deepcopy(_cached(tuple(extra_special)))


def save_tiny_tokenizer(directory: str | Path, extra_special: tuple[str, ...] | list[str] = ()) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tiny_tokenizer(extra_special).save_pretrained(directory)
    return directory
