"""One sweep trial: its Plan (the base config with the trial's values, validated like any run), its
identity (the plan hash), the metric its run wrote, and the sweep's state file (written atomically)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runner.plan import hashing
from runner.plan.output_dir import MAX_NAME

from runner.config import schema
from runner.errors import ConfigErrors, UserError

STATE_FILE = "sweep_state.json"
STATE_VERSION = 1


@dataclass
class Trial:
    index: int
    params: dict  # dotted config key -> value
    internal: dict = field(default_factory=dict)  # optuna's encoding of the same values
    key: str = ""  # the plan hash (or a stand-in when a hub model leaves it unresolved)
    plan_hash: str | None = None
    run_dir: str = ""
    status: str = "pending"  # pending | running | finished | pruned | failed
    metric: float | None = None
    intermediate: list = field(default_factory=list)  # [[eval point, value], ...]
    error: str | None = None
    same_as: int | None = None  # a repeated point: the trial whose run it reuses

    @property
    def done(self) -> bool:
        return self.status in ("finished", "pruned")


def _parts(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def _typed(parts: tuple, value):
    """Sampled floats for integer keys (q_uniform 8.0 for adapter.r) become ints."""
    types = schema.types_at(parts)
    if isinstance(value, float) and value.is_integer() and "integer" in types and "number" not in types:
        return int(value)
    return value


def set_key(loaded, name: str, value, origin: str) -> None:
    """Set a dotted key (list indices allowed) in a loaded config, creating sections as needed."""
    parts = _parts(name)
    node = loaded.data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise UserError(f"{name}: {'.'.join(map(str, parts[:i]))} has no item {part}", where=origin)
            node = node[part]
        else:
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
    last = parts[-1]
    if isinstance(node, list) and not (isinstance(last, int) and last < len(node)):
        raise UserError(f"{name}: no item {last} in the list", where=origin)
    node[last] = _typed(parts, value)
    for p in [p for p in loaded.positions if p[: len(parts)] == parts]:
        del loaded.positions[p]
    loaded.positions[parts] = origin


def trial_key(plan) -> str:
    """The plan hash; when a hub model keeps it unresolved, the config and data hashes stand in."""
    if plan.hashes.plan:
        return plan.hashes.plan
    return hashing.digest_text({"config": plan.hashes.config, "data": plan.hashes.data,
                                "model": plan.model.path, "revision": plan.model.revision})


def _describe(params: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


def trial_plan(config_path, params: dict, trials_dir: Path | None = None):
    """The Plan of the base config with `params` applied, validated like any run. With `trials_dir`
    the run directory is trials_dir/<plan hash> and the run is named after it."""
    from runner.config import load as config
    from runner.plan import resolve as planning

    def build(extra: dict):
        loaded = config.load(config_path)
        for name, value in {**params, **extra}.items():
            set_key(loaded, name, value, f"sweep trial ({name}={value!r})")
        cfg, warnings = planning.validated(loaded)
        return planning.resolve(loaded, cfg, warnings)

    try:
        plan = build({})
        if trials_dir is None:
            return plan
        key = trial_key(plan)
        # Named like the W&B engine's `{plan_hash}` directories.
        # A trial's name stays within the schema's limit on names, whatever the base name's length.
        name = f"{plan.name[:MAX_NAME - 9]}-{key[:8]}"
        return build({"output.dir": str(Path(trials_dir) / hashing.short(key)), "name": name})
    except ConfigErrors as err:
        lines = "\n  ".join(str(e) for e in err.errors)
        raise UserError(f"the trial {_describe(params)} is not a valid config:\n  {lines}",
                        hint="narrow the sweep's ranges or fix the base config") from None
    except UserError as err:
        raise UserError(f"the trial {_describe(params)} is not a valid config: {err}") from None


# ---- the metric a run wrote --------------------------------------------------------------------

def _candidates(name: str) -> tuple[str | None, list[str]]:
    """(row kind, keys) a metric name refers to: eval_loss, loss, or W&B's eval/eval_loss, train/loss."""
    if "/" in name:
        kind, key = name.split("/", 1)
        return kind, [key] + ([f"eval_{key}"] if kind == "eval" and not key.startswith("eval_") else [])
    if name.startswith("eval_"):
        return "eval", [name]
    return None, [name]


def read_rows(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill
    return rows


def metric_series(run_dir, name: str) -> list[tuple[int, float]]:
    """[(step, value)] of a metric in a run's metrics.jsonl, in logged order (finite values only)."""
    kind, keys = _candidates(name)
    out = []
    for row in read_rows(run_dir):
        if kind and row.get("kind", kind) != kind:
            continue
        for key in keys:
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out.append((int(row.get("step", len(out))), float(value)))
                break
    return out


def final_metric(run_dir, name: str) -> float | None:
    """The run's value of the metric: the last one it logged (as W&B's summary does)."""
    series = metric_series(run_dir, name)
    return series[-1][1] if series else None


# ---- the state file ----------------------------------------------------------------------------

def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(data, indent=2, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # a kill leaves the old state or the new one, never half of one


def save_state(out: Path, fingerprint: str, info: dict, trials: list) -> None:
    write_json_atomic(out / STATE_FILE, {"version": STATE_VERSION, "fingerprint": fingerprint, **info,
                                         "trials": [asdict(t) for t in trials]})


def load_state(out: Path, fingerprint: str) -> list:
    """The trials a previous run of the same sweep recorded ([] when none)."""
    path = out / STATE_FILE
    if not path.is_file():
        return []
    try:
        state = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON", hint="delete it to start the sweep over") from None
    if state.get("fingerprint") != fingerprint:
        raise UserError(f"{out} holds a different sweep (other config file, sweep file or seed)",
                        hint="choose another --out, or delete the folder to start over")
    names = {f for f in Trial.__dataclass_fields__}
    return [Trial(**{k: v for k, v in t.items() if k in names}) for t in state.get("trials", [])]
