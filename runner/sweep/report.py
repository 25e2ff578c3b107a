"""What a sweep leaves behind: the table of trials (markdown + JSON), the best trial's config as a
standalone YAML (extends merged, the trial's values in, paths relative to it), and a plot of the metric."""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

from runner.plan import hashing

from runner.config import schema
from runner.sweep.trials import set_key, write_json_atomic

TABLE_MD, TABLE_JSON, BEST_YAML, PLOT = "trials.md", "trials.json", "best.yaml", "sweep.png"


def best_trial(trials: list, goal: str):
    scored = [t for t in trials if t.status == "finished" and t.metric is not None and t.same_as is None]
    if not scored:
        return None
    if goal == "minimize":
        return min(scored, key=lambda t: (t.metric, t.index))
    return max(scored, key=lambda t: (t.metric, -t.index))  # ties: the earlier trial


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value) if not isinstance(value, str) else value
    return text.replace("|", "\\|")


def write_table(out: Path, sweep, trials: list, best) -> str:
    names = [p.name for p in sweep.searched] or [p.name for p in sweep.params]
    metric = (sweep.metric or {}).get("name", "metric")
    head = ["trial", "status", *names, metric, "plan hash", "run dir"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in sorted(trials, key=lambda t: t.index):
        status = t.status + (" (best)" if best is not None and t is best else "")
        if t.same_as is not None:
            status += f" (same point as trial {t.same_as})"
        run_dir = os.path.relpath(t.run_dir, out) if t.run_dir else ""
        cells = [t.index, status, *(t.params.get(n, "") for n in names),
                 "" if t.metric is None else t.metric, hashing.short(t.plan_hash) or "", run_dir]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / TABLE_MD).write_text(text)
    write_json_atomic(out / TABLE_JSON, {
        "metric": sweep.metric, "method": sweep.method,
        "best": None if best is None else best.index,
        "trials": [asdict(t) for t in sorted(trials, key=lambda t: t.index)],
    })
    return text


# ---- the best config ---------------------------------------------------------------------------

_CONFIG_RELATIVE = [("model", "path"), ("model", "tokenizer"), ("template", "jinja")]


def _rebase(value: str, src_dir: Path, dst_dir: Path) -> str:
    """A path written relative to src_dir, rewritten relative to dst_dir (hub ids and package: kept)."""
    if not isinstance(value, str) or value.startswith(("package:", "/", "~")) or Path(value).is_absolute():
        return value  # absolute paths and installed packages mean the same from anywhere
    full = src_dir / value
    if not full.exists():
        return value  # a hub id, or a file that is not here: as written
    return os.path.relpath(full.resolve(), dst_dir)


def standalone_config(config_path: Path, params: dict, dst_dir: Path) -> tuple[dict, list[str]]:
    """The base config as one file: extends merged, `${env:...}` kept as written, the trial's values
    set, config-relative paths rewritten for dst_dir. Returns (config, notes for the header)."""
    from runner.config import load as config

    data = config.load_raw(config_path).data
    holder = SimpleNamespace(data=copy.deepcopy(data), positions={})
    for name, value in params.items():
        set_key(holder, name, value, "best trial")
    cfg = holder.data
    src = Path(config_path).resolve().parent
    for section, key in _CONFIG_RELATIVE:
        if isinstance(cfg.get(section), dict) and cfg[section].get(key):
            cfg[section][key] = _rebase(cfg[section][key], src, dst_dir)
    for group in ("datasets", "eval_datasets"):
        for ds in cfg.get(group) or []:
            if isinstance(ds, dict) and ds.get("path") and ds.get("type") != "hub":
                ds["path"] = _rebase(ds["path"], src, dst_dir)
    notes = []
    for path in schema.secret_paths():
        node = cfg
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(path[-1]) if isinstance(node, dict) else None
        if isinstance(value, str) and "${env:" not in value:
            del node[path[-1]]
            notes.append(f"{'.'.join(path)} was left out (a secret written in the config); set it with ${{env:NAME}}")
    return cfg, notes


def write_best(out: Path, config_path: Path, sweep, best, base_name: str) -> Path | None:
    if best is None:
        return None
    import yaml

    from runner.importers.common import ordered

    cfg, notes = standalone_config(config_path, best.params, out)
    cfg["name"] = f"{base_name}-best"
    cfg = ordered(cfg)
    metric = (sweep.metric or {}).get("name")
    header = [f"# Best trial ({best.index}) of the sweep {sweep.path} over {config_path}:",
              f"#   {metric} = {best.metric:.6g} ({sweep.goal}), plan hash {best.plan_hash}",
              f"#   its run: {best.run_dir}",
              "# Standalone: bases merged, the trial's values set, paths relative to this file.",
              *(f"# {n}" for n in notes)]
    path = out / BEST_YAML
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(header) + "\n" + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    os.replace(tmp, path)
    return path


# ---- the plot ----------------------------------------------------------------------------------

def write_plot(out: Path, sweep, trials: list, best) -> Path | None:
    metric = (sweep.metric or {}).get("name")
    shown = sorted((t for t in trials if t.same_as is None), key=lambda t: t.index)
    if not metric or not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    curves = [t for t in shown if len(t.intermediate) > 1]
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(11 if curves else 6.5, 4), squeeze=False)
    ax = axes[0][0]
    for status, marker in (("finished", "o"), ("pruned", "x"), ("failed", "s")):
        pts = [(t.index, _last(t)) for t in shown if t.status == status and _last(t) is not None]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, label=status, zorder=3)
    running, best_so_far = [], None
    for t in shown:
        if t.status == "finished" and t.metric is not None:
            better = best_so_far is None or (t.metric < best_so_far if sweep.goal == "minimize" else t.metric > best_so_far)
            best_so_far = t.metric if better else best_so_far
        if best_so_far is not None:
            running.append((t.index, best_so_far))
    if running:
        ax.step(*zip(*running), where="post", label="best so far", alpha=0.6)
    if best is not None:
        ax.annotate(f"best: trial {best.index}", (best.index, best.metric), textcoords="offset points", xytext=(5, 8))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{sweep.method} sweep: {metric} per trial ({sweep.goal})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    if curves:
        ax2 = axes[0][1]
        for t in curves:
            ax2.plot(*zip(*t.intermediate), marker=".", label=f"trial {t.index}", alpha=0.8)
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_xlabel("evaluation point")
        ax2.set_ylabel(metric)
        ax2.set_title("during training")
        if len(curves) <= 12:
            ax2.legend(fontsize="x-small")
    fig.tight_layout()
    path = out / PLOT
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _last(t):
    if t.metric is not None:
        return t.metric
    values = [v for _, v in t.intermediate if isinstance(v, (int, float)) and math.isfinite(v)]
    return values[-1] if values else None
