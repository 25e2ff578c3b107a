"""README.md of a run directory: a Hugging Face model card with what was trained, from what, the
hashes that identify the run, and the resolved config."""
from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors",)


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
    base = model.path + (f" ({model.gguf_file})" if model.gguf_file else "")
    is_adapter = (run_dir / "adapter_config.json").is_file()
    weights = sorted(p for p in run_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    datasets = [f"{Path(d.path).name} ({d.format})" for d in plan.data.datasets]
    front = {
        "library_name": "peft" if is_adapter else "transformers",
        "base_model": model.path if model.source == "hub" else None,
        "tags": ["runner", plan.training.stage, plan.adapter.kind],
    }
    front = {k: v for k, v in front.items() if v}
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        f"# {plan.name}",
        "",
        f"Trained by runner: **{plan.training.stage}** with a **{plan.adapter.kind}** adapter on `{base}`.",
        "",
        "## Result",
        "",
        f"- optimizer steps: {summary.get('steps')}",
        f"- final train loss: {summary.get('final_loss')}",
        f"- final eval loss: {summary.get('final_eval_loss')}",
        f"- {info.summary()}",
        f"- datasets: {', '.join(datasets)}",
        f"- runtime: {plan.runtime.device} x{plan.runtime.world_size}, dtype {plan.runtime.dtype}, "
        f"precision {plan.runtime.precision}",
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
        "## Use",
        "",
        "```python",
        *(_usage_adapter(run_dir, model) if is_adapter else _usage_full(run_dir)),
        "```",
        "",
        f"Or: `runner generate {run_dir} -p \"Hello\"`; `runner merge {run_dir}` writes a standalone model.",
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(plan.config, sort_keys=False, allow_unicode=True).strip(),
        "```",
        "",
    ]
    path = run_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


def _usage_adapter(run_dir, model) -> list[str]:
    gguf = f", gguf_file={model.gguf_file!r}" if model.gguf_file else ""
    return [
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"base = AutoModelForCausalLM.from_pretrained({model.path!r}{gguf})",
        f"model = PeftModel.from_pretrained(base, {str(run_dir)!r})",
        f"tokenizer = AutoTokenizer.from_pretrained({str(run_dir)!r})",
    ]


def _usage_full(run_dir) -> list[str]:
    return [
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"model = AutoModelForCausalLM.from_pretrained({str(run_dir)!r})",
        f"tokenizer = AutoTokenizer.from_pretrained({str(run_dir)!r})",
    ]
