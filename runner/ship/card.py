"""Model cards for what leaves the run directory: the merged folder's README.md and the card that
`runner push` uploads. The metadata is huggingface_hub's ModelCardData (what the Hub reads: base
model, license, datasets, library, pipeline, tags, and the run's hashes under `runner`); the body
says what the model is, the system prompt it was trained with, how to load it, and the hashes
that identify the run. Like the run's own card (runner.train.card) it names no local path: local
files show as `<local>/NAME`."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runner.train.card import base_model_id, file_sha256, shareable_config

PIPELINE = "text-generation"
UNKNOWN_LICENSE = "other"  # the Hub's value for a license it has no identifier for


@dataclass(frozen=True)
class Card:
    """What a card says beyond the plan: what it describes and where a reader loads it from."""
    kind: str            # "adapter" (PEFT adapter), "merged" (adapter merged into the base), "full" (full fine-tune)
    location: str        # the folder or hub repo the loading code names
    weights: tuple = ()  # (name, local path) of the weight files, hashed in the card
    license: str | None = None
    base_id: str | None = None  # the base model's hub id (for base_model and loading code)


def base_facts(plan) -> dict:
    """{'license', 'language'} of the base model, where its files say: a GGUF's general.license /
    general.languages, a local folder's README front matter, or the hub cache's copy of it."""
    facts = {}
    model = plan.model
    if model.gguf_file:
        facts = _gguf_facts(Path(model.path) / model.gguf_file)
    elif model.source == "local":
        facts = _readme_facts(Path(model.path) / "README.md")
    elif model.source == "hub":
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model.path, "README.md", revision=model.revision)
        except Exception:  # no cache, or an id it cannot parse: the license stays unknown
            cached = None
        if isinstance(cached, str):
            facts = _readme_facts(Path(cached))
    return {k: v for k, v in facts.items() if v}


def _gguf_facts(path: Path) -> dict:
    try:
        from gguf import GGUFReader

        fields = GGUFReader(str(path)).fields
    except Exception:  # no gguf package, or a file it cannot read
        return {}
    out = {}
    if fields.get("general.license") is not None:
        out["license"] = str(fields["general.license"].contents())
    if fields.get("general.languages") is not None:
        out["language"] = list(fields["general.languages"].contents())
    return out


def _readme_facts(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        from huggingface_hub import ModelCard

        data = ModelCard.load(path, ignore_metadata_errors=True).data
    except Exception:  # a README without (valid) front matter
        return {}
    return {"license": data.license, "language": data.language}


def card_data(plan, card: Card):
    from huggingface_hub import ModelCardData

    facts = base_facts(plan)
    hashes = {f"{k}_hash": getattr(plan.hashes, k) for k in ("config", "data", "model", "plan")
              if getattr(plan.hashes, k)}
    return ModelCardData(
        base_model=card.base_id,
        license=card.license or facts.get("license") or UNKNOWN_LICENSE,
        language=facts.get("language"),
        datasets=[d.path for d in plan.data.datasets if d.source == "hub"] or None,
        library_name="peft" if card.kind == "adapter" else "transformers",
        pipeline_tag=PIPELINE,
        tags=["runner", plan.training.stage, plan.adapter.kind, *(["merged"] if card.kind == "merged" else [])],
        runner=hashes,
    )


def card_text(plan, card: Card, summary: dict | None = None) -> str:
    """The whole README.md: front matter from card_data, then the body."""
    data = card_data(plan, card)
    lines = ["---", data.to_yaml(), "---", f"# {plan.name}" + (" (merged)" if card.kind == "merged" else ""), ""]
    lines += [_what(plan, card), ""]
    lines += system_prompt_section(plan)
    lines += ["## Use", "", "```python", *usage_lines(plan, card), "```", ""]
    if card.kind == "adapter" and plan.model.gguf_file:
        lines += [f"The adapter was trained on the GGUF file's weights (`{plan.model.gguf_file}`, dequantized); "
                  "the lines above load exactly those. "
                  + (f"`AutoPeftModelForCausalLM.from_pretrained` would load `{card.base_id}`'s original weights "
                     "instead, which differ from them by the file's quantization error." if card.base_id else ""), ""]
    lines += _training(plan, summary or {})
    lines += ["## Hashes", "", "| what | sha256 |", "| --- | --- |"]
    for key in ("config", "data", "model", "tokenizer", "plan"):
        if getattr(plan.hashes, key):
            lines.append(f"| {key}_hash | `{getattr(plan.hashes, key)}` |")
    for name, path in card.weights:
        lines.append(f"| {name} | `{file_sha256(Path(path))}` |")
    import yaml

    lines += ["", "## Config", "", "```yaml",
              yaml.safe_dump(shareable_config(plan.config), sort_keys=False, allow_unicode=True).strip(), "```", ""]
    return "\n".join(lines)


def _what(plan, card: Card) -> str:
    base = f"[{card.base_id}](https://huggingface.co/{card.base_id})" if card.base_id else "its base model"
    if plan.model.gguf_file:
        base += f" (GGUF `{plan.model.gguf_file}`)"
    how = {"adapter": f"a **{plan.adapter.kind}** adapter for {base}",
           "merged": f"{base} with the **{plan.adapter.kind}** adapter of run `{plan.name}` merged into its weights",
           "full": f"{base}, fine-tuned in full"}[card.kind]
    return f"Trained by runner ({plan.training.stage}): {how}."


def system_prompt_section(plan) -> list[str]:
    template = plan.data.template
    if plan.data.stage == "pt":
        return []
    if template.system_prompt:
        quoted = "\n".join("> " + line for line in template.system_prompt.splitlines() or [""])
        text = ["Trained with this system prompt (`template.system_prompt`):", "", quoted, "",
                "`chat_template.jinja` inserts it when a conversation has no system message (a conversation's "
                "own system message replaces it), so transformers' `apply_chat_template`, vLLM and "
                "`runner generate` prompt the model as it was trained."]
    else:
        text = [f"No system prompt was configured: conversations without one were rendered as the "
                f"`{template.name}` template renders them (with its own default system prompt, if it has one); "
                "`chat_template.jinja` is that template."]
    if any(d.system for d in plan.data.datasets):
        text.append("Some datasets set a system prompt of their own for their rows (`datasets[].system`).")
    return ["## System prompt", "", *text, ""]


def usage_lines(plan, card: Card) -> list[str]:
    where = repr(card.location)
    if card.kind != "adapter":
        return ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f"model = AutoModelForCausalLM.from_pretrained({where})",
                f"tokenizer = AutoTokenizer.from_pretrained({where})",
                'messages = [{"role": "user", "content": "Hello"}]',
                "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
                "return_dict=True)",
                "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0][inputs[\"input_ids\"].shape[1]:], "
                "skip_special_tokens=True))"]
    if plan.model.gguf_file:
        written = str(plan.config["model"]["path"])
        if written.startswith("package:"):
            head = ["import importlib.util", ""]
            base_dir = (f"base_dir = importlib.util.find_spec({written.split(':', 1)[1]!r})"
                        ".submodule_search_locations[0]  # the installed package's folder")
        else:
            head = []
            base_dir = f"base_dir = 'path/to/base'  # the folder that holds {plan.model.gguf_file}"
        return head + ["from peft import PeftModel",
                       "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                       base_dir,
                       f"base = AutoModelForCausalLM.from_pretrained(base_dir, gguf_file={plan.model.gguf_file!r})",
                       f"model = PeftModel.from_pretrained(base, {where})",
                       f"tokenizer = AutoTokenizer.from_pretrained({where})"]
    return ["from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer", "",
            f"model = AutoPeftModelForCausalLM.from_pretrained({where})  # loads the base model, then the adapter",
            f"tokenizer = AutoTokenizer.from_pretrained({where})"]


def _training(plan, summary: dict) -> list[str]:
    datasets = [f"`{d.path if d.source == 'hub' else Path(d.path).name}` ({d.format})" for d in plan.data.datasets]
    lines = ["## Training", "", f"- run `{plan.name}`, plan hash `{plan.hashes.plan}`",
             f"- datasets: {', '.join(datasets)}"]
    if summary.get("steps") is not None:
        lines.append(f"- optimizer steps: {summary['steps']}, final train loss: {summary.get('final_loss')}")
    if plan.runtime:
        lines.append(f"- runtime: {plan.runtime.device} x{plan.runtime.world_size}, dtype {plan.runtime.dtype}")
    return lines + [""]


def run_summary(run_dir) -> dict:
    try:
        return json.loads((Path(run_dir) / "RUN_COMPLETE").read_text())
    except (OSError, ValueError):
        return {}


def write_merged_card(out_dir, plan, run_dir) -> Path:
    """README.md of a merged folder, written last (its presence says the folder is whole)."""
    from runner.rundir import write_text_atomic

    out_dir = Path(out_dir)
    weights = tuple((p.name, p) for p in sorted(out_dir.glob("*.safetensors")))
    written = str(plan.config["model"]["path"] or plan.model.path)
    card = Card("merged", _folder_shown(out_dir, Path(run_dir)), weights, base_id=base_model_id(plan.model, written))
    path = out_dir / "README.md"
    write_text_atomic(path, card_text(plan, card, run_summary(run_dir)))
    return path


def _folder_shown(folder: Path, run_dir: Path) -> str:
    """The folder relative to where runner ran when it lies below it; a run's merged/ folder as
    RUN/merged; else its name."""
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        pass
    try:
        return str(Path(run_dir.resolve().name) / folder.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return folder.name
