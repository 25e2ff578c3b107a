"""A random-init checkpoint of a model shape written to disk shard by shard, for shapes too large to
build in memory (Llama-3-70B: 141 GB of bf16, more than one GPU holds and minutes to initialise on a
CPU). The model is built on the meta device (names, shapes, dtypes; no storage), then each tensor is
filled on its own (on a GPU when there is one), moved to host memory and written with its shard; a
shard's tensors are dropped before the next is filled. Peak host memory is about one shard
(`--shard-gib`), whatever the model's size. The result is an ordinary Hugging Face folder
(config.json, model-0000k-of-0000n.safetensors, model.safetensors.index.json, tokenizer) that
`from_pretrained` reads, with or without bitsandbytes quantization.

    python bench/random_checkpoint.py --shape llama3_70b --out /path/llama3-70b [--data ../shared/data]

Written once (a marker file says done; a half-written folder is rebuilt), so a GPU session can write
it in one call and train from it in the next. Values: weights ~ N(0, initializer_range), norms 1,
biases 0, the same for a given --seed on any device kind."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARKER = "random_checkpoint.json"


def fill(name: str, shape: tuple, dtype, std: float, generator, device):
    import torch

    if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
        return torch.ones(shape, dtype=dtype, device=device)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.empty(shape, dtype=torch.float32, device=device).normal_(0.0, std, generator=generator).to(dtype)


def write(config, directory: Path, *, shard_bytes: int = 5 << 30, seed: int = 0, device: str | None = None,
          tokenizer=None) -> Path:
    """`config` (a transformers config) as a random-init checkpoint in `directory`; returns it."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    if (directory / MARKER).is_file():
        return directory
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=config.dtype or torch.bfloat16)
    keep = set(model.state_dict())  # persistent tensors only; tied weights appear once below
    tensors = [(n, p) for n, p in model.named_parameters() if n in keep]
    tensors += [(n, b) for n, b in model.named_buffers() if n in keep]
    # Shards by size, in the model's order (a layer's tensors stay together).
    shards, current, size = [], [], 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, tuple(t.shape), t.dtype))
        size += nbytes
    if current:
        shards.append(current)
    del model
    generator = torch.Generator(device=device).manual_seed(seed)
    std = getattr(config, "initializer_range", 0.02)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        data = {name: fill(name, shape, dtype, std, generator, device).cpu() for name, shape, dtype in shard}
        save_file(data, str(tmp / file), metadata={"format": "pt"})
        total += sum(v.numel() * v.element_size() for v in data.values())
        weight_map.update({name: file for name in data})
        del data
        print(f"wrote {file}", file=sys.stderr, flush=True)
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    config.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({"shards": len(shards), "bytes": total, "seed": seed}))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def main(argv=None) -> int:
    sys.path.insert(0, str(HERE))
    import catalog
    import modeldir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="llama3_70b", choices=sorted(catalog.SHAPES))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, help="shared data folder, for the tokenizer (default ../shared/data)")
    p.add_argument("--shard-gib", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="the shape in miniature (a CPU check)")
    args = p.parse_args(argv)
    from transformers import LlamaConfig

    data = args.data or HERE.parent.parent / "shared" / "data"
    tokenizer = modeldir.train_tokenizer(data, modeldir.SMOKE_VOCAB if args.tiny else modeldir.FULL_VOCAB)
    keys = {**catalog.SHAPES[args.shape], **(catalog.TINY if args.tiny else {})}
    if args.tiny:
        keys["vocab_size"] = len(tokenizer)
    config = LlamaConfig(**keys, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None, dtype="bfloat16")
    out = write(config, args.out, shard_bytes=int(args.shard_gib * (1 << 30)), seed=args.seed, tokenizer=tokenizer)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
