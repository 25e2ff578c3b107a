"""`runner merge RUN_DIR [--out DIR]`: the run's adapter merged into its base model, written as
sharded safetensors that AutoModelForCausalLM.from_pretrained loads. A QLoRA adapter is merged
into the unquantized base, reloaded in the plan's dtype (merging into 4-bit weights would round
the update away). The folder gets the run's tokenizer, its chat template with the training
system prompt (runner.ship.prompt) and a model card of its own (README.md, written last)."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from runner.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a finished run directory (holds plan.json and the adapter)")
    parser.add_argument("--out", default=None, help="output directory (default: RUN_DIR/merged)")
    parser.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard (default 2GB)")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="dtype of the merged weights (default: the run's dtype)")


def run(args) -> int:
    from runner.quiet import quiet_for_run_dir

    quiet_for_run_dir(args.run_dir, getattr(args, "debug", False))
    out = merge_run(args.run_dir, args.out, max_shard_size=args.max_shard_size, dtype=args.dtype)
    print(f"merged model: {out}", file=sys.stderr)
    return 0


PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")


def load_run_plan(run_dir):
    """The Plan stored in a run directory (secrets are never stored: a hub token comes from HF_TOKEN)."""
    from runner.plan.plan import Plan

    path = Path(run_dir) / "plan.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no plan.json)", where=str(run_dir),
                        hint="pass the output.dir of a runner training run")
    try:
        return Plan.from_dict(json.loads(path.read_text()), earlier=True)
    except (TypeError, ValueError) as err:  # a plan.json of another runner version, or damaged
        raise UserError(f"{path} is not a plan this runner can read: {err}", where=str(path),
                        hint="use the runner version that trained this run (plan.json's launch.versions names it), "
                             "or train it again") from None


def load_base_for_adapter(plan, run_dir, tokenizer, dtype: str | None = None):
    """The unquantized base in the run's dtype, with embeddings sized as in training."""
    from runner.train.model import load_model

    dtype = dtype or (plan.runtime.dtype if plan.runtime else "float32")
    model = load_model(plan, dtype=dtype, attn_implementation="sdpa", quantize=False, for_training=False)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model


def merge_run(run_dir, out_dir=None, *, max_shard_size: str = "2GB", dtype: str | None = None) -> Path:
    from peft import PeftModel
    from transformers import AutoTokenizer

    from runner.ship.card import write_merged_card
    from runner.ship.prompt import save_tokenizer
    from runner.train.model import drop_gguf_quantizer

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / "merged"
    plan = load_run_plan(run_dir)
    from runner.evaluate.reward_model import refuse_generation

    refuse_generation(plan, run_dir, "merge")
    if not (run_dir / "adapter_config.json").is_file():
        raise UserError(f"{run_dir} holds a full model, not an adapter: there is nothing to merge",
                        where=str(run_dir), hint="load the run directory itself with AutoModelForCausalLM")
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    base = load_base_for_adapter(plan, run_dir, tokenizer, dtype)
    merged = PeftModel.from_pretrained(base, run_dir).merge_and_unload()
    drop_gguf_quantizer(merged)
    merged.config.use_cache = True
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True, max_shard_size=max_shard_size)
    save_tokenizer(tokenizer, plan, out_dir)
    for name in PROCESSOR_FILES:  # a vision-language model's processor: how images become tokens
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out_dir / name)
    write_merged_card(out_dir, plan, run_dir)
    return out_dir
