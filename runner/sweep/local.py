"""The local sweep engine: optuna drives the search (grid -> GridSampler, random -> RandomSampler,
bayes -> TPESampler, early_terminate -> HyperbandPruner), trials run one after another, each a normal
run directory. Finished trials are recorded by plan hash in a state file, so a killed sweep resumes
without running them again."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Callable

from runner.plan import hashing
from runner.errors import UserError
from runner.sweep.report import best_trial, write_best, write_plot, write_table
from runner.sweep.space import distributions, grid_points, grid_space, sample
from runner.sweep.trials import Trial, final_metric, load_state, metric_series, save_state, trial_key, trial_plan

STUDY_NAME = "runner-sweep"  # fixed: Hyperband's bracket assignment hashes it


class TrialPruned(Exception):
    """Raised by `report` when the pruner gives up on a trial; the trial function lets it through."""


class Reporter:
    """Passed to the trial function: `report(step, value)` at each evaluation; may raise TrialPruned."""

    def __init__(self, otrial, metric: str | None, pruning: bool):
        self.otrial, self.metric, self.pruning = otrial, metric, pruning
        self.points: list = []  # [[evaluation point, value]]
        self.pruned = False

    def __call__(self, step: int, value: float) -> None:
        point = len(self.points) + 1  # W&B's hyperband counts metric reports, not optimizer steps
        self.points.append([point, float(value)])
        self.otrial.report(float(value), point)
        if self.pruning and self.otrial.should_prune():
            self.pruned = True
            raise TrialPruned(f"stopped at evaluation point {point} (step {step}): {self.metric}={value:.6g}")


def train_trial(plan, report: Reporter) -> Path:
    """The default trial: a normal training run. Reports eval metrics to the pruner when
    runner.train.command.run accepts `callbacks` (transformers TrainerCallbacks)."""
    from runner.train import command as train

    if report.pruning and "callbacks" in inspect.signature(train.run).parameters:
        return train.run(plan, callbacks=[_pruning_callback(report)])
    return train.run(plan)


def _pruning_callback(report: Reporter):
    from transformers import TrainerCallback

    class Pruning(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            name = (report.metric or "").split("/")[-1]
            value = (metrics or {}).get(name, (metrics or {}).get(f"eval_{name}"))
            if value is None:
                return
            try:
                report(state.global_step, value)
            except TrialPruned:
                control.should_training_stop = True

    return Pruning()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _study(sweep, seed: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = {"grid": lambda: optuna.samplers.GridSampler(grid_space(sweep), seed=seed),
               "random": lambda: optuna.samplers.RandomSampler(seed=seed),
               "bayes": lambda: optuna.samplers.TPESampler(seed=seed)}[sweep.method]()
    stop = sweep.early_terminate
    pruner = optuna.pruners.NopPruner()
    if stop:
        pruner = optuna.pruners.HyperbandPruner(min_resource=stop.get("min_iter", 1),
                                                max_resource=stop.get("max_iter", "auto"),
                                                reduction_factor=stop.get("eta", 3))
    direction = "maximize" if sweep.goal == "maximize" else "minimize"
    return optuna.create_study(study_name=STUDY_NAME, direction=direction, sampler=sampler, pruner=pruner)


def _restore(study, sweep, done: list) -> None:
    """Finished trials of an earlier run go back into the study: the sampler and pruner learn from them."""
    import optuna

    dists = distributions(sweep)
    for t in done:
        if set(t.internal) != set(dists) or t.same_as is not None:
            continue
        state = optuna.trial.TrialState.PRUNED if t.status == "pruned" else optuna.trial.TrialState.COMPLETE
        value = t.metric if t.metric is not None else 0.0
        study.add_trial(optuna.trial.create_trial(
            params=t.internal, distributions=dists, state=state,
            value=None if state == optuna.trial.TrialState.PRUNED else value,
            intermediate_values={int(p): float(v) for p, v in t.intermediate}))


def planned_points(sweep, count: int, seed: int) -> list[tuple[dict, dict]]:
    """Grid: its points; random: `count` samples drawn up front (same seed, same points)."""
    if sweep.method == "grid":
        return grid_points(sweep)[:count]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    points = []
    for _ in range(count):
        otrial = scratch.ask()
        values = sample(sweep, otrial)
        points.append((values, dict(otrial.params)))
        scratch.tell(otrial, 0.0)
    return points


def run_local(config_path, sweep, out: Path, count: int, *, points: list | None, plans: list | None,
              base_name: str, fingerprint: str, seed: int = 0, trial_fn: Callable | None = None) -> list[Trial]:
    """Run the sweep; returns every trial (earlier runs' included). Grid/random: `points` are the
    planned (values, optuna params) and `plans` their validated Plans; bayes samples as it goes."""
    import optuna

    trial_fn = trial_fn or train_trial
    metric = (sweep.metric or {}).get("name")
    target = (sweep.metric or {}).get("target")
    previous = load_state(out, fingerprint)
    done = {t.key: t for t in previous if t.done}
    records = [t for t in previous if t.done]
    study = _study(sweep, seed)
    _restore(study, sweep, records)
    info = {"config": str(config_path), "sweep": str(sweep.path), "method": sweep.method, "metric": sweep.metric}

    def checkpoint(plot: bool = False):
        save_state(out, fingerprint, info, records)
        best = best_trial(records, sweep.goal)
        write_table(out, sweep, records, best)
        write_best(out, config_path, sweep, best, base_name)
        if plot:  # matplotlib takes a while: at the end (and when interrupted) only
            write_plot(out, sweep, records, best)

    def reached_target() -> bool:
        if target is None:
            return False
        good = [t.metric for t in records if t.status == "finished" and t.metric is not None]
        return any((m <= target) if sweep.goal == "minimize" else (m >= target) for m in good)

    def run_one(index: int, otrial, values: dict, plan) -> None:
        key = trial_key(plan)
        if key in done:  # the same plan ran before (a resumed sweep, or bayes proposing a point again)
            earlier = done[key]
            records.append(Trial(index, values, dict(otrial.params), key, plan.hashes.plan, earlier.run_dir,
                                 earlier.status, earlier.metric, list(earlier.intermediate), same_as=earlier.index))
            if earlier.status == "pruned":
                study.tell(otrial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(otrial, earlier.metric if earlier.metric is not None else 0.0)
            checkpoint()
            return
        trial = Trial(index, values, dict(otrial.params), key, plan.hashes.plan, plan.output.dir, "running")
        records.append(trial)
        checkpoint()
        _say(f"sweep: trial {index} ({', '.join(f'{k}={v!r}' for k, v in values.items())}) -> {trial.run_dir}")
        report = Reporter(otrial, metric, pruning=bool(sweep.early_terminate))
        try:
            run_dir = trial_fn(plan, report)
        except TrialPruned as stop:
            trial.status, trial.error, run_dir = "pruned", str(stop), plan.output.dir
        except KeyboardInterrupt:
            checkpoint(plot=True)  # the trial stays "running": it runs again (resuming its checkpoint) next time
            raise
        except Exception as err:  # noqa: BLE001 - one failed trial (OOM, divergence) does not end the sweep
            trial.status, trial.error = "failed", f"{type(err).__name__}: {err}"
            study.tell(otrial, state=optuna.trial.TrialState.FAIL)
            checkpoint()
            _say(f"sweep: trial {index} failed: {trial.error}")
            if isinstance(err, UserError):
                raise  # the user's to fix; the next trial would fail the same way
            return
        trial.run_dir = str(run_dir or plan.output.dir)
        if report.pruned:
            trial.status = "pruned"
        if not report.points and metric:  # no live reports: record the history the run wrote
            trial.intermediate = [[i + 1, v] for i, (_, v) in enumerate(metric_series(trial.run_dir, metric))]
            for point, value in trial.intermediate:
                otrial.report(value, point)
        else:
            trial.intermediate = report.points
        if trial.status == "pruned":
            study.tell(otrial, state=optuna.trial.TrialState.PRUNED)
            trial.metric = trial.intermediate[-1][1] if trial.intermediate else None
        else:
            trial.metric = final_metric(trial.run_dir, metric) if metric else None
            if metric and trial.metric is None:
                trial.status, trial.error = "failed", f"the run wrote no {metric!r} to metrics.jsonl"
                study.tell(otrial, state=optuna.trial.TrialState.FAIL)
            else:
                trial.status = "finished"
                study.tell(otrial, trial.metric if trial.metric is not None else 0.0)
        if trial.done:
            done[key] = trial
        checkpoint()
        _say(f"sweep: trial {index} {trial.status}" + (f": {metric} = {trial.metric:.6g}" if trial.metric is not None else ""))

    if points is not None:
        for index, ((values, internal), plan) in enumerate(zip(points, plans)):
            if reached_target():
                _say(f"sweep: {metric} reached the target {target}; no new trials")
                break
            if trial_key(plan) in done:
                continue  # finished in an earlier run of this sweep
            study.enqueue_trial(internal, skip_if_exists=False)
            otrial = study.ask()
            sample(sweep, otrial)  # records the enqueued values as the trial's params
            run_one(index, otrial, values, plan)
    else:
        index = max((t.index for t in records), default=-1) + 1
        while sum(1 for t in records if t.done or t.status == "failed") < count and not reached_target():
            otrial = study.ask()
            values = sample(sweep, otrial)
            plan = trial_plan(config_path, values, out / "trials")
            run_one(index, otrial, values, plan)
            index += 1
    checkpoint(plot=True)
    return records


def fingerprint_of(config_path: Path, sweep, seed: int) -> str:
    """What makes two runs the same sweep (the trial count may grow between them)."""
    return hashing.digest_text({"config": str(Path(config_path).resolve()), "sweep": sweep.raw, "seed": seed})
