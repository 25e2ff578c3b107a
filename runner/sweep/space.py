"""The sweep file (W&B's sweep format, parameters named by dotted config keys): reading, validation,
and the search space: grid points, distributions sampled through an optuna trial, corner points."""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from runner.config import schema
from runner.errors import ConfigErrors, UserError

RANGE_KINDS = {"int_uniform", "uniform", "q_uniform", "log_uniform", "log_uniform_values", "q_log_uniform",
               "q_log_uniform_values", "inv_log_uniform", "inv_log_uniform_values"}
QUANTILE_KINDS = {"normal", "q_normal", "log_normal", "q_log_normal", "beta", "q_beta", "categorical_w_probabilities"}
MAX_GRID = 10_000
_EPS = 1e-6  # quantiles stay inside (0, 1) so normal/beta inverses are finite


@dataclass
class Param:
    """One search dimension; `name` is the dotted config key it sets."""

    name: str
    kind: str  # constant | categorical | one of W&B's distributions
    spec: dict
    where: str = ""

    @property
    def values(self) -> list:
        return self.spec.get("values", [])

    @property
    def discrete(self) -> bool:
        return self.kind in ("constant", "categorical", "categorical_w_probabilities", "int_uniform") or (
            self.kind == "q_uniform")

    def choices(self) -> list:
        """Every value of a discrete parameter, in order."""
        if self.kind == "constant":
            return [self.spec["value"]]
        if self.kind in ("categorical", "categorical_w_probabilities"):
            return list(self.values)
        low, high = self.spec["min"], self.spec["max"]
        if self.kind == "int_uniform":
            return list(range(int(low), int(high) + 1))
        q = self.spec.get("q", 1.0)
        count = int(math.floor((high - low) / q + 1e-9)) + 1
        return [_tidy(low + i * q, q) for i in range(count)]


@dataclass
class Sweep:
    path: Path
    method: str
    params: list  # Param
    metric: dict | None = None
    early_terminate: dict | None = None
    run_cap: int | None = None
    raw: dict = field(default_factory=dict)

    @property
    def searched(self) -> list:
        return [p for p in self.params if p.kind != "constant"]

    @property
    def goal(self) -> str:
        return (self.metric or {}).get("goal", "minimize")

    def grid_size(self) -> int:
        return math.prod(len(p.choices()) for p in self.params)


def _tidy(value: float, q: float):
    """round(x / q) * q without float noise; an int when q and the result are whole."""
    out = round(round(value / q) * q, 12)
    return int(out) if float(q).is_integer() and float(out).is_integer() else out


def infer_kind(spec: dict) -> str:
    """W&B's rules when `distribution` is left out."""
    if "distribution" in spec:
        return spec["distribution"]
    if "values" in spec:
        return "categorical_w_probabilities" if "probabilities" in spec else "categorical"
    if "value" in spec:
        return "constant"
    if isinstance(spec.get("min"), int) and isinstance(spec.get("max"), int) \
            and not isinstance(spec["min"], bool) and not isinstance(spec["max"], bool):
        return "int_uniform"
    return "uniform"


def flatten(parameters: dict, prefix: tuple = (), path: tuple = ("parameters",)) -> list:
    """[(dotted name, spec, yaml path)] with nested `parameters:` blocks joined by dots."""
    out = []
    for key, spec in parameters.items():
        if isinstance(spec, dict) and "parameters" in spec:
            out += flatten(spec["parameters"], prefix + (key,), path + (key, "parameters"))
        else:
            out.append((".".join(prefix + (key,)), spec, path + (key,)))
    return out


def _config_key_error(name: str) -> str | None:
    parts = tuple(int(p) if p.isdigit() else p for p in name.split("."))
    if schema.subschema(parts) is not None:
        return None
    cut = len(parts) - 1
    while cut > 0 and schema.subschema(parts[:cut]) is None:
        cut -= 1
    obj = schema._object_branch(schema.subschema(parts[:cut]) if cut else schema.load_schema()) or {}
    hint = schema.suggest(str(parts[cut]), list(obj.get("properties", {})), schema._aliases(obj)) if obj else None
    better = ".".join(map(str, parts[:cut] + (hint,))) if hint else None
    return f"{name!r} is not a config key" + (f"; did you mean {better!r}?" if better else "")


def _check_param(p: Param, method: str) -> list[str]:
    spec, kind, out = p.spec, p.kind, []
    if kind in RANGE_KINDS:
        if "min" not in spec or "max" not in spec:
            return [f"{kind} needs min and max"]
        if spec["min"] > spec["max"]:
            out.append(f"min {spec['min']} is above max {spec['max']}")
        if kind.endswith("_values") and spec["min"] <= 0:
            out.append(f"{kind} needs min > 0")
        if kind == "int_uniform" and not all(float(spec[k]).is_integer() for k in ("min", "max")):
            out.append("int_uniform needs whole-number min and max")
    if kind == "categorical_w_probabilities":
        probs = spec.get("probabilities", [])
        if len(probs) != len(p.values):
            out.append(f"{len(probs)} probabilities for {len(p.values)} values")
        elif abs(sum(probs) - 1) > 1e-6:
            out.append(f"probabilities add up to {sum(probs)}, not 1")
    if method == "grid" and not p.discrete:
        out.append(f"grid search needs a finite set of values; {kind} is continuous (use values: [...])")
    return out


def load_sweep(path) -> Sweep:
    """Read and check a sweep file. Raises UserError / ConfigErrors naming file:line:column."""
    from runner.config.yamlsafe import load_yaml, read_bounded

    path = Path(path).expanduser().resolve()
    located = load_yaml(read_bounded(path, str(path), "sweep file"), str(path))
    data, positions = located.value, located.positions

    def where(p: tuple) -> str:
        for end in range(len(p), -1, -1):
            if p[:end] in positions:
                return positions[p[:end]]
        return str(path)

    errors = schema.validate(data, where, name="sweep")
    if errors:
        raise ConfigErrors(errors)
    params, seen = [], set()
    for name, spec, ypath in flatten(data["parameters"]):
        p = Param(name, infer_kind(spec), spec, where(ypath))
        problems = [] if (bad := _config_key_error(name)) is None else [bad]
        if name in seen:
            problems.append("given twice")
        seen.add(name)
        problems += _check_param(p, data["method"])
        errors += [UserError(f"parameters.{name}: {msg}", where=p.where) for msg in problems]
        params.append(p)
    metric = data.get("metric")
    if data["method"] == "bayes" and not metric:
        errors.append(UserError("bayes search needs a metric to model", where=where(("method",)),
                                hint="add metric: {name: eval_loss, goal: minimize}"))
    if data.get("early_terminate") and not metric:
        errors.append(UserError("early_terminate needs a metric", where=where(("early_terminate",))))
    sweep = Sweep(path, data["method"], params, metric, data.get("early_terminate"), data.get("run_cap"), data)
    if data["method"] == "grid" and not errors and sweep.grid_size() > MAX_GRID:
        errors.append(UserError(f"the grid has {sweep.grid_size()} points (at most {MAX_GRID})",
                                where=where(("parameters",)), hint="use method: random with --trials N"))
    if errors:
        raise ConfigErrors(errors)
    return sweep


# ---- the search space through optuna ------------------------------------------------------------

def distributions(sweep: Sweep) -> dict:
    """Optuna distributions of the sweep's searched parameters (internal names and encodings)."""
    import optuna.distributions as d

    out = {}
    for p in sweep.searched:
        spec, kind = p.spec, p.kind
        if sweep.method == "grid":  # grid points are indices into each parameter's choices
            out[p.name] = d.CategoricalDistribution(list(range(len(p.choices()))))
        elif kind == "categorical":
            out[p.name] = d.CategoricalDistribution(list(range(len(p.values))))  # indices: values may be lists
        elif kind in QUANTILE_KINDS:
            out[p.name + "#quantile"] = d.FloatDistribution(_EPS, 1 - _EPS)
        elif kind == "int_uniform":
            out[p.name] = d.IntDistribution(int(spec["min"]), int(spec["max"]))
        elif kind in ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values"):
            out[p.name] = d.FloatDistribution(float(spec["min"]), float(spec["max"]), log=True)
        else:  # uniform, q_uniform; log_uniform / inv_log_uniform sample their exponent
            out[p.name] = d.FloatDistribution(float(spec["min"]), float(spec["max"]))
    return out


def grid_space(sweep: Sweep) -> dict:
    """GridSampler's search space: each searched parameter's choices as indices."""
    return {p.name: list(range(len(p.choices()))) for p in sweep.searched}


def grid_points(sweep: Sweep) -> list[tuple[dict, dict]]:
    """[(config values, optuna params)] of every grid point, the first parameter varying slowest."""
    searched = sweep.searched
    out = []
    for combo in itertools.product(*(range(len(p.choices())) for p in searched)):
        values = {p.name: p.choices()[i] for p, i in zip(searched, combo)}
        out.append((with_constants(sweep, values), dict(zip((p.name for p in searched), combo))))
    return out


def _suggest(trial, name: str, dist):
    import optuna.distributions as d

    if isinstance(dist, d.CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, d.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def with_constants(sweep: Sweep, values: dict) -> dict:
    out = {p.name: p.spec["value"] for p in sweep.params if p.kind == "constant"}
    out.update(values)
    return {p.name: out[p.name] for p in sweep.params if p.name in out}  # file order


def value_of(p: Param, internal) -> object:
    """The config value of a parameter from its optuna-internal sample."""
    spec, kind = p.spec, p.kind
    if kind == "categorical":
        return p.values[internal]
    if kind == "categorical_w_probabilities":
        total = 0.0
        for value, prob in zip(p.values, spec["probabilities"]):
            total += prob
            if internal < total:
                return value
        return p.values[-1]
    if kind in ("normal", "q_normal", "log_normal", "q_log_normal"):
        x = statistics.NormalDist(spec.get("mu", 0.0), spec.get("sigma", 1.0)).inv_cdf(internal)
        x = math.exp(x) if "log" in kind else x
    elif kind in ("beta", "q_beta"):
        x = _beta_ppf(internal, spec.get("a", 1.0), spec.get("b", 1.0))
    elif kind in ("log_uniform", "q_log_uniform"):
        x = math.exp(internal)
    elif kind == "inv_log_uniform":
        x = math.exp(-internal)
    else:
        x = internal
    if kind.startswith("q_"):
        return _tidy(x, spec.get("q", 1.0))
    return x


def sample(sweep: Sweep, trial) -> dict:
    """Config values for one optuna trial (every searched parameter suggested, constants added)."""
    values = {}
    for (name, dist), p in zip(distributions(sweep).items(), sweep.searched):
        internal = _suggest(trial, name, dist)
        values[p.name] = p.choices()[internal] if sweep.method == "grid" else value_of(p, internal)
    return with_constants(sweep, values)


def corner_points(sweep: Sweep) -> list[dict]:
    """Points that bound a random/bayes space: all-low, all-high, and each value of each parameter with
    the others low. Checked before a sweep starts, so a bad region fails before any trial runs."""
    def ends(p: Param) -> list:
        if p.kind in ("categorical", "categorical_w_probabilities"):
            return list(p.values)
        if p.kind in QUANTILE_KINDS:
            return [value_of(p, _EPS), value_of(p, 1 - _EPS)]
        if p.kind in ("log_uniform", "q_log_uniform", "inv_log_uniform"):
            return [value_of(p, p.spec["min"]), value_of(p, p.spec["max"])]
        return [value_of(p, p.spec["min"]), value_of(p, p.spec["max"])]

    searched = sweep.searched
    options = {p.name: ends(p) for p in searched}
    low = {p.name: options[p.name][0] for p in searched}
    points = [low, {p.name: options[p.name][-1] for p in searched}]
    for p in searched:
        points += [{**low, p.name: v} for v in options[p.name][1:-1]]
    unique = []
    for point in points:
        full = with_constants(sweep, point)
        if full not in unique:
            unique.append(full)
    return unique


def _beta_ppf(u: float, a: float, b: float) -> float:
    """Inverse of the regularised incomplete beta function, by bisection (no scipy here)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _beta_cdf(mid, a, b) < u:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _beta_cdf(x: float, a: float, b: float) -> float:
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(x, a, b) / a
    return 1 - front * _beta_fraction(1 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-12:
            break
    return h
