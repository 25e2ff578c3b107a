"""Weights & Biases, when tracking.wandb is set. The run's config holds the whole plan and its
hashes; an API key from the config only ever lives in this process's environment (never on disk,
never in the plan: wandb.login would write ~/.netrc, so it is not called)."""
from __future__ import annotations

import os

from runner.errors import UserError
from runner.plan.sections import to_dict


def start_wandb(plan, run_dir, *, is_main: bool = True, run_id: str | None = None):
    """An open wandb run, or None when tracking.wandb is unset/disabled or on other ranks. `run_id`
    (from the stored plan's runtime) continues the same W&B run when training resumes."""
    settings = plan.tracking.wandb
    if not settings or not is_main:
        return None
    mode = os.environ.get("WANDB_MODE") or settings.mode
    if mode == "disabled":
        return None
    try:
        import wandb
    except ImportError as exc:
        raise UserError("tracking.wandb is set but wandb is not installed", where="tracking.wandb",
                        hint="pip install 'runner[wandb]', or remove tracking.wandb") from exc
    key = plan.secret("tracking.wandb.api_key")
    if key:
        os.environ["WANDB_API_KEY"] = key
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or _netrc_has_wandb()):
        raise UserError("tracking.wandb.mode is online but no W&B API key is set", where="tracking.wandb",
                        hint="export WANDB_API_KEY=..., or use mode: offline and `wandb sync` later")
    config = {
        "runner_plan": plan.to_dict(),
        "hashes": {k: v for k, v in to_dict(plan.hashes).items() if isinstance(v, str)},
        "run_dir": str(run_dir),
    }
    from runner import quiet

    try:
        return wandb.init(
            # quiet: W&B's version banner and summary tables only with --debug; where the run is
            # saved (offline) or its page (online) is still printed.
            settings=wandb.Settings(quiet=True) if quiet.active() else None,
            project=settings.project,
            entity=settings.entity,
            name=settings.name or plan.name,
            tags=list(settings.tags),
            mode=mode,
            dir=str(run_dir),
            config=config,
            resume="allow" if run_id else None,
            id=run_id,
        )
    except Exception as exc:  # wandb raises many types for network and auth problems
        raise UserError(f"W&B could not start: {exc}", where="tracking.wandb",
                        hint="check the network / key, or use mode: offline") from exc


def _netrc_has_wandb() -> bool:
    path = os.path.expanduser("~/.netrc")
    return os.path.isfile(path) and "api.wandb.ai" in open(path).read()


def finish_wandb(run, summary: dict | None = None) -> None:
    if run is None:
        return
    if summary:
        for key, value in summary.items():
            run.summary[key] = value
    run.finish()
