"""`runner preprocess cfg.yaml [KEY=VALUE ...] [--show N]`: build the tokenized-data cache ahead of
training and show what trains.

A second run with the same data hash loads the cache and touches no tokenizer unless --show
needs one to decode samples. Under torch.distributed / accelerate launch only the local main
process builds; the others wait and load.
"""

from __future__ import annotations

import json
import sys


def add_arguments(p) -> None:
    p.add_argument("config", help="config file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. sequence.max_length=1024")
    p.add_argument("--show", type=int, default=0, metavar="N", help="print N tokenized samples, trained tokens marked")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="mark trained tokens with colour (auto: when stdout is a terminal) or [[brackets]]")
    p.add_argument("--split", choices=("train", "eval"), default="train", help="which split --show prints")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")


def run(args) -> int:
    from runner.data import build_datasets, load_tokenizer, refuse_untrainable
    from runner.data.stats import format_stats, show_samples
    from runner.errors import UserError
    from runner.plan.resolve import make_plan

    from runner import quiet

    plan = make_plan(args.config, args.overrides, write_cache=True)
    # Loading the tokenizer and the template's helpers imports transformers and trl, and through them
    # torchao where it is installed: their notices only with --debug.
    quiet.quiet_libraries(getattr(args, "debug", False), gguf=bool(plan.model.gguf_file))
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    loaded = {}

    def tokenizer():
        if "tok" not in loaded:
            loaded["tok"] = load_tokenizer(plan)
        return loaded["tok"]

    prepared = build_datasets(plan, tokenizer, progress=sys.stderr.isatty())
    try:
        refuse_untrainable(plan, prepared)
        refused = None
    except UserError as e:  # shown after the statistics, which say where the rows went
        refused = e
    if args.show:
        dataset = prepared.train if args.split == "train" else prepared.eval
        if dataset is None:
            print(f"no {args.split} split to show", file=sys.stderr)
        else:
            color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
            print(show_samples(tokenizer(), dataset, args.show, color))
            print()
    print(json.dumps(prepared.stats, indent=1, sort_keys=True) if args.json else format_stats(prepared.stats))
    print(f"cache: {prepared.stats['cache']} {prepared.stats['cache_dir']}", file=sys.stderr)
    if refused is not None:
        raise refused
    return 0
