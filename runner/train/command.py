"""`runner train cfg.yaml [key=value ...]` (also `python -m runner cfg.yaml` and `accelerate launch -m
runner cfg.yaml`): plan the config, then carry the Plan out (runner.train.recipe)."""
from __future__ import annotations

import argparse
import os
import sys



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the run's YAML config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.learning_rate=1e-4")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run in output.dir")
    parser.add_argument("--smoke", action="store_true",
                        help="run the recipe's code path on a CPU in seconds: tiny random model of the same family, "
                             "2 steps (runner/train/smoke.py)")
    parser.add_argument("--resume-changed", action="store_true",
                        help="resume an unfinished run although its plan changed (the changes are printed)")


def run(target, *, overwrite: bool = False, callbacks=(), resume_changed: bool = False):
    """CLI entry (argparse namespace -> exit code) and library entry (Plan -> run directory).
    `callbacks`: extra transformers TrainerCallbacks (library use: probes, early stops)."""
    from runner.train.recipe import train

    if isinstance(target, argparse.Namespace):
        from runner.plan.resolve import make_plan

        from runner import quiet
        from runner.launch import EXIT_DIR_ENV

        overrides = list(target.overrides)
        if getattr(target, "smoke", False):
            from runner.train.smoke import smoke_overrides

            quiet.quiet_libraries(getattr(target, "debug", False))  # the tiny model is built and saved here
            overrides += smoke_overrides(target.config, overrides)
        plan = make_plan(target.config, overrides, write_cache=True)
        quiet.quiet_libraries(getattr(target, "debug", False), gguf=bool(plan.model.gguf_file))
        quiet.keep_out_bitsandbytes(plan, training=True)
        if _is_main() and EXIT_DIR_ENV not in os.environ:  # `runner launch` printed them once already
            for warning in plan.warnings:
                print(f"warning: {warning}", file=sys.stderr)
        from runner.train.signals import EXIT_INTERRUPTED, TrainingInterrupted

        try:
            run_dir = train(plan, overwrite=target.overwrite,
                            resume_changed=getattr(target, "resume_changed", False))
        except OSError as err:  # a write outside the checkpoint and final saves (metrics, plan)
            from runner.rundir.diskfull import raise_if_full

            raise_if_full(err)
            raise
        except TrainingInterrupted as stop:
            _say(f"interrupted by {stop.signame} after step {stop.step}; checkpoint: {stop.checkpoint}\n"
                 f"  run the same command again to resume (exit code {EXIT_INTERRUPTED})")
            return EXIT_INTERRUPTED
        if _is_main():
            print(f"run directory: {run_dir}", file=sys.stderr)
        return 0
    return train(target, overwrite=overwrite, callbacks=callbacks, resume_changed=resume_changed)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _say(message: str) -> None:
    if _is_main() and message:
        print(message, file=sys.stderr)
