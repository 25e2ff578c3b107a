"""The W&B engine: runner's sweep file -> a W&B sweep config, created on the W&B server, with an agent
that runs `python -m runner train CONFIG key=value ...` per trial (W&B's ${args_no_hyphens} macro
writes exactly runner's dotted overrides). Needs a W&B account; see docs/sweep.md."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from runner.errors import UserError
from runner.sweep.space import Sweep, flatten



def wandb_metric_name(name: str) -> str:
    """runner's tracking logs `train/<key>` and `eval/<key>` to W&B; metrics.jsonl names map onto them."""
    if "/" in name:
        return name
    return f"eval/{name}" if name.startswith("eval_") else f"train/{name}"


def default_command(config_path: Path, out: Path) -> list[str]:
    # The plan hash names each trial's run directory, as the local engine does.
    return ["${env}", "${interpreter}", "-m", "runner", "train", str(config_path),
            f"output.dir={out / 'trials' / '{plan_hash}'}", "${args_no_hyphens}"]


def wandb_config(sweep: Sweep, config_path: Path, out: Path, count: int | None, tracking: dict | None) -> dict:
    """The W&B sweep config for `sweep`: nested parameters flattened to dotted names (W&B passes
    them back as `name=value` arguments), the metric under its W&B name, the trial command."""
    raw = sweep.raw
    cfg = {"method": sweep.method,
           "parameters": {name: copy.deepcopy(spec) for name, spec, _ in flatten(raw["parameters"])},
           "program": raw.get("program", "runner"),
           "command": list(raw.get("command") or default_command(Path(config_path).resolve(), Path(out)))}
    if sweep.metric:
        cfg["metric"] = {**sweep.metric, "name": wandb_metric_name(sweep.metric["name"])}
    for key in ("early_terminate", "description"):
        if key in raw:
            cfg[key] = copy.deepcopy(raw[key])
    cfg["name"] = raw.get("name") or f"{Path(config_path).stem} x {sweep.path.stem}"
    if count:
        cfg["run_cap"] = count
    wandb = tracking or {}
    for key in ("project", "entity"):
        value = raw.get(key) or wandb.get(key)
        if value:
            cfg[key] = value
    return cfg


def _scalar(value) -> bool:
    return isinstance(value, (str, int, float, bool))


def check_values(sweep: Sweep, points) -> None:
    """W&B hands values to the command as text (`key=value`): only scalars survive that."""
    for p in sweep.params:
        values = p.choices() if p.discrete else []
        bad = [v for v in values if not _scalar(v)]
        if bad:
            raise UserError(f"parameters.{p.name}: the W&B engine passes values as text; {bad[0]!r} is not a "
                            "string, number or boolean", where=p.where, hint="use --engine local for list values")


def run(sweep: Sweep, config_path: Path, out: Path, count: int, base_plan) -> None:
    import yaml

    from runner.plan.sections import to_dict

    tracking = to_dict(base_plan.tracking.wandb) if base_plan.tracking.wandb else None
    if not tracking or tracking["mode"] != "online":
        raise UserError("the W&B engine needs the trials to log to W&B online",
                        hint="set tracking.wandb.project (mode: online) in the config, or use --engine local")
    cfg = wandb_config(sweep, config_path, out, count, tracking)
    (out / "wandb_sweep.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    try:
        import wandb
    except ImportError:
        raise UserError("wandb is not installed", hint="pip install 'runner[wandb]'") from None
    sweep_id = wandb.sweep(sweep=cfg, project=cfg.get("project"), entity=cfg.get("entity"))
    target = "/".join(x for x in (cfg.get("entity"), cfg.get("project"), sweep_id) if x)
    print(f"sweep: created W&B sweep {target}; more agents: wandb agent {target}", file=sys.stderr)
    wandb.agent(sweep_id, project=cfg.get("project"), entity=cfg.get("entity"), count=count)
