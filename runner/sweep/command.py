"""`runner sweep cfg.yaml sweep.yaml [--engine local|wandb] [--trials N] [--out DIR]`: a hyperparameter
sweep in W&B's sweep format over dotted config keys. Every trial's config is built and validated
before anything runs; then the local engine (optuna) runs the trials here, or the W&B engine creates
the sweep on the W&B server and runs an agent. At the end: a table of trials, the best config as a
standalone YAML and a plot of the metric."""

from __future__ import annotations

import argparse
import netrc
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runner.errors import UserError
from runner.sweep.space import Sweep, corner_points, load_sweep
from runner.sweep.trials import trial_key, trial_plan

SHOWN_ERRORS = 10


@dataclass
class SweepResult:
    out: Path
    trials: list  # sweep_trials.Trial
    best: object | None
    table: str

    @property
    def failed(self) -> list:
        return [t for t in self.trials if t.status == "failed"]


def trial_count(sweep: Sweep, trials: int | None) -> int:
    cap = trials or sweep.run_cap
    if sweep.method == "grid":
        return min(sweep.grid_size(), cap) if cap else sweep.grid_size()
    if not cap:
        raise UserError(f"{sweep.method} search needs a number of trials", where=str(sweep.path),
                        hint="pass --trials N or set run_cap: N in the sweep file")
    return cap


def build_plans(config_path, points: list, trials_dir: Path) -> list:
    """The validated Plan of every planned point; all invalid trials are reported at once."""
    plans, errors = [], []
    for values, _ in points:
        try:
            plans.append(trial_plan(config_path, values, trials_dir))
        except UserError as err:
            errors.append(err)
    if errors:
        shown = "\n".join(f"- {e}" for e in errors[:SHOWN_ERRORS])
        more = f"\n... and {len(errors) - SHOWN_ERRORS} more" if len(errors) > SHOWN_ERRORS else ""
        raise UserError(f"{len(errors)} of {len(points)} trials are not valid configs; no trial was run:\n{shown}{more}",
                        hint="narrow the sweep's values or fix the base config")
    return plans


def _eval_metric(name: str) -> bool:
    return name.startswith("eval") or name.startswith("eval/")


def check_metric(sweep: Sweep, plan) -> None:
    """What the metric and early termination need from every trial, checked on the base plan."""
    metric = (sweep.metric or {}).get("name")
    if not metric:
        return
    has_eval = bool(plan.data.eval_datasets) or plan.data.val_size > 0
    if _eval_metric(metric) and not has_eval:
        raise UserError(f"the metric {metric} needs evaluation data, and the config has none",
                        where=str(sweep.path), hint="add eval_datasets or val_size (e.g. val_size: 0.1) to the config")
    if sweep.early_terminate:
        if not _eval_metric(metric):
            raise UserError("early_terminate stops trials at evaluation points: the metric must be an eval metric",
                            where=str(sweep.path), hint="metric: {name: eval_loss}")
        if not (plan.training.eval_every or plan.training.evals_per_epoch):
            raise UserError("early_terminate needs evaluations during training", where=str(sweep.path),
                            hint="set training.eval_every or training.evals_per_epoch in the config "
                                 "(or as a constant sweep parameter)")


def _check_grid_distinct(points: list, plans: list) -> None:
    seen = {}
    for i, plan in enumerate(plans):
        key = trial_key(plan)
        if key in seen:
            j = seen[key]
            raise UserError(f"grid trials {j} and {i} train the same run (same plan hash): "
                            f"{points[j][0]} vs {points[i][0]}",
                            hint="a swept key that does not change training (output, tracking, name) makes no trials")
        seen[key] = i


def wandb_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_sweep(config_path, sweep_path, *, engine: str | None = None, trials: int | None = None, out=None,
              seed: int = 0, trial_fn: Callable | None = None, dry_run: bool = False) -> SweepResult:
    """Validate every trial, then run the sweep. `trial_fn(plan, report) -> run_dir` runs one trial
    (default: a normal training run)."""
    from runner.sweep import local as sweep_local
    from runner.sweep import report as sweep_report

    config_path = Path(config_path).expanduser().resolve()
    sweep = load_sweep(sweep_path)
    base = trial_plan(config_path, {})  # the base config itself must be valid
    out = Path(out).expanduser().resolve() if out else Path.cwd() / "outputs" / "sweeps" / \
        f"{config_path.stem}-{sweep.path.stem}"
    count = trial_count(sweep, trials)
    check_metric(sweep, base)
    if engine is None:
        engine = "wandb" if base.tracking.wandb and wandb_configured() else "local"
        _say(f"sweep: engine {engine}" + (" (W&B is configured)" if engine == "wandb" else ""))
    points = plans = None
    if sweep.method in ("grid", "random"):
        points = sweep_local.planned_points(sweep, count, seed)
        plans = build_plans(config_path, points, out / "trials")
        if sweep.method == "grid":
            _check_grid_distinct(points, plans)
    else:
        build_plans(config_path, [(c, {}) for c in corner_points(sweep)], out / "trials")
    if engine == "wandb":
        from runner.sweep import wandb_agent as sweep_wandb

        sweep_wandb.check_values(sweep, points)
    _say(f"sweep: {count} trial(s) of {sweep.method} search validated" +
         (f"; grid of {sweep.grid_size()}" if sweep.method == "grid" else ""))
    out.mkdir(parents=True, exist_ok=True)
    base_name = base.name
    if dry_run:
        return SweepResult(out, [], None, _planned_table(sweep, points, plans, out))
    if engine == "wandb":
        from runner.sweep import wandb_agent as sweep_wandb

        sweep_wandb.run(sweep, config_path, out, count, base)
        return SweepResult(out, [], None, "")
    fingerprint = sweep_local.fingerprint_of(config_path, sweep, seed)
    records = sweep_local.run_local(config_path, sweep, out, count, points=points, plans=plans, base_name=base_name,
                                    fingerprint=fingerprint, seed=seed, trial_fn=trial_fn)
    best = sweep_report.best_trial(records, sweep.goal)
    table = (out / sweep_report.TABLE_MD).read_text() if (out / sweep_report.TABLE_MD).is_file() else ""
    return SweepResult(out, records, best, table)


def _planned_table(sweep: Sweep, points, plans, out: Path) -> str:
    if points is None:
        return f"bayes search: {len(corner_points(sweep))} corner configs validated; trials are sampled as they run\n"
    names = [p.name for p in sweep.params]
    lines = ["| trial | " + " | ".join(names) + " | plan hash | run dir |", "|---|" + "---|" * (len(names) + 2)]
    for i, ((values, _), plan) in enumerate(zip(points, plans)):
        cells = [str(values.get(n, "")) for n in names]
        lines.append(f"| {i} | " + " | ".join(cells) + f" | {trial_key(plan)[:12]} | "
                     f"{os.path.relpath(plan.output.dir, out)} |")
    return "\n".join(lines) + "\n"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("config", help="the base run config (YAML)")
    parser.add_argument("sweep", help="the sweep file (W&B sweep format, dotted config keys)")
    parser.add_argument("--engine", choices=["local", "wandb"],
                        help="local: optuna here (default unless W&B is configured); wandb: a W&B server sweep")
    parser.add_argument("--trials", type=int, metavar="N", help="number of trials (random/bayes; caps a grid)")
    parser.add_argument("--out", metavar="DIR", help="sweep folder (default: outputs/sweeps/CONFIG-SWEEP)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search (sampling order)")
    parser.add_argument("--dry-run", action="store_true", help="validate every trial and show them; run nothing")


def run(args: argparse.Namespace) -> int:
    if args.trials is not None and args.trials < 1:
        raise UserError("--trials must be at least 1")
    result = run_sweep(args.config, args.sweep, engine=args.engine, trials=args.trials, out=args.out,
                       seed=args.seed, dry_run=args.dry_run)
    sys.stdout.write(result.table)
    if result.trials:
        from runner.sweep import report as sweep_report

        print(f"\ntable: {result.out / sweep_report.TABLE_MD} (and {sweep_report.TABLE_JSON})", file=sys.stderr)
        if result.best is not None:
            print(f"best: trial {result.best.index}, config {result.out / sweep_report.BEST_YAML}", file=sys.stderr)
        if (result.out / sweep_report.PLOT).is_file():
            print(f"plot: {result.out / sweep_report.PLOT}", file=sys.stderr)
    if result.failed:
        print(f"{len(result.failed)} trial(s) failed; re-run the same command to retry them", file=sys.stderr)
        return 1
    return 0
