"""A scenario's model directory: config.json of the shape and a tokenizer, no weights (runner reads
only the architecture under `model.random_init`). Under --smoke the shape is tiny and its random
weights are saved too, so the smoke run works whether or not runner reads them.

The tokenizer is a byte-level BPE trained here, in seconds, on the shared data's own text. At 32k
tokens it splits alpaca_en_demo, rendered with chatml and SmolLM2's default system prompt, into
median 159 / mean 200 tokens per sample, against median 162 / mean 201 in alpaca_en_lengths.json
(SmolLM2's tokenizer), which the padded baseline uses: both sides train on the same lengths."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TEXT_FILES = ("alpaca_en_demo.json", "c4_demo.jsonl", "wiki_demo.txt")
FULL_VOCAB, SMOKE_VOCAB = 32000, 2048


def corpus(data_dir: Path) -> list[str]:
    """Plain text of the shared SFT / pretraining files."""
    data_dir = Path(data_dir)
    texts = ["\n".join(r.get(k, "") for k in ("instruction", "input", "output"))
             for r in json.loads((data_dir / "alpaca_en_demo.json").read_text())]
    texts += [json.loads(line)["text"] for line in (data_dir / "c4_demo.jsonl").read_text().splitlines() if line.strip()]
    texts += [line for line in (data_dir / "wiki_demo.txt").read_text().splitlines() if line.strip()]
    return texts


def train_tokenizer(data_dir: Path, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(data_dir), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 additional_special_tokens=["<|im_start|>"])
    hf.chat_template = CHATML
    return hf


def build(shape: dict, directory: Path, data_dir: Path, smoke: bool) -> Path:
    """The model dir for `shape` (cached: rebuilt only when missing)."""
    directory = Path(directory)
    marker = directory / "bench_model.json"
    if marker.is_file():
        return directory
    from transformers import LlamaConfig

    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = train_tokenizer(data_dir, SMOKE_VOCAB if smoke else FULL_VOCAB)
    tokenizer.save_pretrained(tmp)
    keys = dict(shape)
    if smoke:
        keys["vocab_size"] = len(tokenizer)
    config = LlamaConfig(**keys, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None, dtype="float32" if smoke else "bfloat16")
    config.save_pretrained(tmp)
    if smoke:
        import torch
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(tmp)
    (tmp / "bench_model.json").write_text(json.dumps({"shape": keys, "smoke": smoke, "weights": smoke,
                                                      "tokenizer_vocab": len(tokenizer)}, indent=1))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def read_shape(directory: Path) -> dict:
    return json.loads((Path(directory) / "bench_model.json").read_text())["shape"]
