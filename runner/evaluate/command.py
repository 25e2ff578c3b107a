"""`runner eval RUN_DIR|CONFIG [--tasks T1,T2|task.yaml|folder] [--num-fewshot N] [--limit N] [--chat]
[--baseline] [--batch-size N]`: a finished run's model (base + adapter, as trained) scored by
lm-evaluation-harness; with a config instead, its base model before any training. Options left out
come from the `evaluation:` section of the run's (or the config's) plan.

The tasks and their data load first, so a wrong name or a missing file fails in seconds, before a
model loads. Results: RUN_DIR/eval/ (runner.evaluate.results), a table on stdout, the model card's
Evaluation section. The same runs after training when the config has `evaluation.tasks`
(`after_training`, called by runner.train.recipe)."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from runner.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="a finished run directory, or a config file (its base model, no adapter)")
    parser.add_argument("--tasks", default=None,
                        help="comma-separated lm-eval task names (mmlu, ceval-valid, cmmlu, arc_easy, ...), task YAML "
                             "files or folders of them (default: the plan's evaluation.tasks)")
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
    parser.add_argument("--limit", type=float, default=None, help="at most N questions per task (quick checks only)")
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                        help="render questions with the run's chat template and training system prompt")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                        help="also evaluate the base model (adapter disabled) and print the difference")
    parser.add_argument("--batch-size", type=int, default=None, help="requests per forward pass (default 8)")
    parser.add_argument("--out", default=None,
                        help="results folder (default: RUN_DIR/eval; for a config: OUTPUT_DIR.base-eval)")


def run(args) -> int:
    target = Path(args.target)
    debug = getattr(args, "debug", False)
    if target.is_dir():
        plan = finished_run_plan(target)
        out = Path(args.out) if args.out else target / "eval"
    elif target.suffix in (".yaml", ".yml") and target.is_file():
        from runner.plan.resolve import make_plan

        plan = make_plan(target)
        out = Path(args.out) if args.out else Path(f"{plan.output.dir}.base-eval")
        target = None
    else:
        raise UserError(f"{args.target} is neither a run directory nor a config file", where=args.target,
                        hint="pass a finished run's output.dir, or a config (.yaml) to score its base model")
    from runner.evaluate import reward_model

    if reward_model.is_reward_run(plan):
        return _reward_model(args, plan, target, out, debug)
    settings = settings_from(args, plan.evaluation)
    if target is None and settings.baseline:
        raise UserError("--baseline compares a run with its base; a config has no trained run",
                        where="--baseline", hint="evaluate the run directory, or drop --baseline")
    _quiet(plan, debug)
    evaluate_target(plan, target, settings, out=out, task_base=Path.cwd(), quiet=not debug)
    return 0


def _reward_model(args, plan, run_dir: Path | None, out: Path, debug: bool) -> int:
    """A stage-rm run has a score head, no LM head: its evaluation is pairwise accuracy, not lm-eval."""
    from runner.evaluate import reward_model

    if run_dir is None:
        raise UserError("a stage-rm config's base model has no trained score head to evaluate", where=args.target,
                        hint="train it, then run `runner eval RUN_DIR` on its output.dir")
    for flag, value in (("--tasks", args.tasks), ("--num-fewshot", args.num_fewshot), ("--chat", args.chat),
                        ("--baseline", args.baseline)):
        if value:
            raise UserError(f"{flag} is for language models; this run is a reward model (stage rm), which "
                            "`runner eval` scores by pairwise accuracy on its preference pairs", where=flag,
                            hint=f"drop {flag}; --limit and --batch-size apply")
    if args.limit is not None and args.limit <= 0:
        raise UserError(f"--limit must be positive, got {args.limit}", where="--limit")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}", where="--batch-size")
    _quiet(plan, debug)
    reward_model.evaluate_run(run_dir, plan, out=out, limit=args.limit, batch_size=args.batch_size or 8)
    return 0


def finished_run_plan(run_dir: Path):
    """The plan of a run directory whose training finished (RUN_COMPLETE); exit 2 otherwise."""
    from runner.rundir.layout import RUN_MARKER
    from runner.ship.merge import load_run_plan

    plan = load_run_plan(run_dir)
    if not (run_dir / RUN_MARKER).is_file():
        raise UserError(f"the run in {run_dir} has not finished (no {RUN_MARKER}): there is no trained model to evaluate yet",
                        where=str(run_dir),
                        hint="run its training to the end (`runner train CONFIG` resumes it from its last checkpoint), "
                             "or score the base model first with `runner eval CONFIG`")
    return plan


def settings_from(args, configured):
    """CLI flags over the plan's evaluation section (absent in plans written before it existed)."""
    from runner.evaluate.harness import Settings
    from runner.evaluate.tasks import split_tasks

    def pick(flag, key, fallback):
        if flag is not None:
            return flag
        return getattr(configured, key) if configured is not None else fallback

    tasks = split_tasks(args.tasks) if args.tasks is not None else list(configured.tasks if configured else ())
    limit = pick(args.limit, "limit", None)
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be positive, got {limit}", where="--limit")
    if limit is not None and limit >= 1:
        limit = int(limit)  # lm-eval reads a number below 1 as a fraction of each task
    batch = pick(args.batch_size, "batch_size", 8)
    if batch < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch}", where="--batch-size")
    return Settings(tasks=tuple(tasks), num_fewshot=pick(args.num_fewshot, "num_fewshot", None), limit=limit,
                    chat=bool(pick(args.chat, "chat", False)), baseline=bool(pick(args.baseline, "baseline", False)),
                    batch_size=batch)


def evaluate_target(plan, run_dir: Path | None, settings, *, out: Path, task_base: Path, quiet: bool = True,
                    where: str = "--tasks") -> list[dict]:
    """Load the tasks, then the model; evaluate (and the base with `settings.baseline`); write the
    results and the card section; print the table. Returns the summary entries written."""
    from runner.evaluate import harness, results
    from runner.evaluate.tasks import load_tasks

    tasks = load_tasks(list(settings.tasks), task_base, where=where, quiet=quiet)
    loaded = harness.load_run(run_dir, plan) if run_dir is not None else harness.load_config_model(plan)
    tuned = "fine-tuned" if run_dir is not None else "base"
    adapter = run_dir.name if loaded.has_adapter else None
    _say(f"evaluating the {tuned} model on {tasks.shown()}" + (f" (limit {settings.limit})" if settings.limit else ""))
    scored = [(harness.evaluate(loaded, tasks, settings, quiet=quiet), tuned)]
    if settings.baseline:
        _say("evaluating the base model (adapter disabled)" if loaded.has_adapter else "evaluating the base model")
        base = loaded
        if not loaded.has_adapter:
            harness.free(loaded)
            base = harness.load_base(loaded)
        scored.append((harness.evaluate(base, tasks, settings, adapter=False, quiet=quiet), "base"))
    entries = []
    for result, label in scored:
        e = results.entry(result, plan=plan, settings=settings, model=label, adapter=adapter if label != "base" else None)
        results.write(out, result, e)
        entries.append(e)
    if run_dir is not None:
        results.update_card(run_dir, results.read_summary(out))
    print(results.format_table(entries))
    _say(f"results: {out / results.SUMMARY}")
    return entries


def after_training(plan, run_dir: Path, is_main: bool) -> None:
    """The config's `evaluation:` section, run on rank 0 once the run is complete. A failure leaves
    the run complete and says how to evaluate it again."""
    if not is_main or plan.evaluation is None or not plan.evaluation.tasks:
        return
    from runner.evaluate.harness import free_memory_after_training
    from runner.quiet import active

    free_memory_after_training()
    if active():
        warnings.filterwarnings("ignore", module=r"lm_eval(\.|$)")
    settings = settings_from(argparse.Namespace(tasks=None, num_fewshot=None, limit=None, chat=None, baseline=None,
                                                batch_size=None), plan.evaluation)
    try:
        finished = finished_run_plan(Path(run_dir))
        evaluate_target(finished, Path(run_dir), settings, out=Path(run_dir) / "eval", task_base=Path(plan.config_dir),
                        quiet=active(), where="evaluation.tasks")
    except UserError as err:
        raise UserError(f"the run finished ({run_dir} is complete) but its evaluation failed: {err.message}",
                        where=err.where,
                        hint=(f"{err.hint}; then " if err.hint else "") + f"`runner eval {run_dir}` evaluates it again") from err


def check_before_training(plan, is_main: bool) -> None:
    """The `evaluation:` tasks loaded (names, files, data) before training starts, so a typo or a
    dataset missing offline is found now, not after hours of training."""
    if not is_main or plan.evaluation is None or not plan.evaluation.tasks:
        return
    from runner.evaluate.tasks import load_tasks
    from runner.quiet import active

    load_tasks(list(plan.evaluation.tasks), Path(plan.config_dir), where="evaluation.tasks", quiet=active())


def _quiet(plan, debug: bool) -> None:
    from runner import quiet

    quiet.quiet_libraries(debug, gguf=bool(plan.model.gguf_file))
    quiet.keep_out_bitsandbytes(plan, training=True)  # a QLoRA base loads quantized, as it trained
    if not debug:
        warnings.filterwarnings("ignore", module=r"lm_eval(\.|$)")


def _say(message: str) -> None:
    print(message, file=sys.stderr)
