"""`runner plan cfg.yaml [KEY=VALUE ...] [--json]`: every derived decision and the hashes."""

from __future__ import annotations

import sys

from runner.plan.plan import Plan
from runner.plan.resolve import make_plan
from runner.plan.sections import to_dict


def add_arguments(p) -> None:
    p.add_argument("config", help="config file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. training.learning_rate=1e-4")
    p.add_argument("--json", action="store_true", help="print the Plan as JSON")


def run(args) -> int:
    plan = make_plan(args.config, args.overrides)
    for w in plan.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(plan.to_json() if args.json else render(plan))
    return 0


def _flat(value, prefix="") -> list[tuple[str, object]]:
    if isinstance(value, dict) and value:
        out = []
        for k, v in value.items():
            out += _flat(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, value)]


def render(plan: Plan) -> str:
    h = plan.hashes
    lines = [f"plan {plan.name}", ""]
    lines.append(f"  config_hash  {h.config}")
    lines.append(f"  data_hash    {h.data or 'unresolved'}")
    lines.append(f"  plan_hash    {h.plan or 'unresolved'}" + ("  (runtime part joins at launch)" if h.plan else ""))
    for u in h.unresolved:
        lines.append(f"  unresolved   {u}")
    t = plan.training
    lines += ["", f"  stage {t.stage}, collator {t.collator}",
              f"  batch: {t.micro_batch_size} x {t.gradient_accumulation} accumulation = "
              f"{t.batch_per_process} per process; effective "
              + (f"{t.effective_batch_size}" if t.effective_batch_size else "x world size (at launch)"),
              f"  output: {plan.output.dir}"]
    if plan.deferred:
        lines.append(f"  deferred to launch: {', '.join(plan.deferred)}")
    lines += prepared_data(plan)
    sections = ("model", "adapter", "quantization", "data", "training", "distributed", "tracking", "output")
    for section in sections:
        value = getattr(plan, section)
        lines += ["", f"{section}:"]
        if section == "quantization" and not value.bits:
            lines.append("  (none)")
            continue
        for key, v in _flat(to_dict(value)):
            lines.append(f"  {key} = {v!r}" if not isinstance(v, str) else f"  {key} = {v}")
    return "\n".join(lines)


def prepared_data(plan: Plan) -> list[str]:
    """What the data cache entry of this data_hash says about the rows (truncated, dropped, what
    train would refuse), read from its stats.json: no tokenizer, no torch."""
    import json
    from pathlib import Path

    from runner.data.cache import CHECKSUMS_FILE, STATS_FILE
    from runner.data.stats import findings, format_stats

    if not plan.hashes.data:
        return ["  prepared data: unknown until the data_hash is resolved"]
    entry = Path(plan.data.cache_dir) / plan.hashes.data
    try:
        if not (entry / CHECKSUMS_FILE).is_file():
            raise FileNotFoundError
        stats = json.loads((entry / STATS_FILE).read_text())
    except (OSError, ValueError):
        return [f"  prepared data: not prepared for this data_hash yet ({entry} does not exist or is incomplete); "
                "`runner preprocess` counts truncated and dropped rows"]
    errors, warnings = findings(stats, to_dict(plan.data.sequence))
    lines = [f"  prepared data: {entry}"] + ["    " + line for line in format_stats(stats).splitlines()[1:]]
    lines += [f"    error (train refuses): {e}" for e in errors] + [f"    warning: {w}" for w in warnings]
    return lines
