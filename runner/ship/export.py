"""`runner export RUN_DIR --format gguf|ollama [--quant f16|q8_0|...] [-o FILE]`: the run's
merged model as one GGUF file (tokenizer, special tokens and the run's chat template with its
training system prompt in the metadata), and for Ollama a Modelfile beside it.

The file is written under a temporary name and renamed when complete. An existing file is
replaced only when runner wrote it (its metadata carries runner's key); anything else needs
--force or another name.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from runner.errors import UserError
from runner.ship.gguf_write import K_QUANTS, MARKER_KEY, QUANTS, check_quant


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a finished run directory")
    parser.add_argument("--format", default="gguf", choices=["gguf", "ollama"],
                        help="gguf: one .gguf file; ollama: the .gguf file and a Modelfile beside it")
    parser.add_argument("--quant", default="f16", type=str.lower, metavar="TYPE",
                        help="tensor type: " + ", ".join(QUANTS) + " (default f16; K-quants need llama-cpp-python)")
    parser.add_argument("-o", "--out", default=None,
                        help="the .gguf file to write (default: RUN_DIR/gguf/NAME-QUANT.gguf)")
    parser.add_argument("--force", action="store_true", help="replace an existing file runner did not write")


def run(args) -> int:
    from runner.quiet import quiet_for_run_dir

    quiet_for_run_dir(args.run_dir, getattr(args, "debug", False))
    out = export_run(args.run_dir, args.format, args.quant, args.out, force=args.force)
    print(f"{args.format} export: {out}", file=sys.stderr)
    if args.format == "ollama":
        print(f"  ollama create {out.stem} -f {out.parent / 'Modelfile'}", file=sys.stderr)
    return 0


def export_run(run_dir, fmt: str = "gguf", quant: str = "f16", out=None, *, force: bool = False) -> Path:
    from runner.ship.merge import load_run_plan

    run_dir = Path(run_dir)
    check_quant(quant)
    plan = load_run_plan(run_dir)
    from runner.evaluate.reward_model import refuse_generation

    refuse_generation(plan, run_dir, "export")
    refuse_vision(plan, run_dir)
    out = Path(out) if out else run_dir / "gguf" / f"{plan.name}-{quant}.gguf"
    if out.suffix != ".gguf":
        raise UserError(f"the output file {out} does not end in .gguf", where="-o", hint="name it NAME.gguf")
    targets = [out] + ([out.parent / "Modelfile"] if fmt == "ollama" else [])
    for target in targets:
        refuse_foreign(target, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    model, tokenizer = merged_in_memory(run_dir)
    system = plan.data.template.system_prompt
    template = chat_template(plan, tokenizer)
    source = _source_gguf(plan)
    _write_atomic(out, lambda tmp: _write_model(model, tokenizer, tmp, quant, template, plan, source))
    if fmt == "ollama":
        from runner.ship.ollama import modelfile

        text = modelfile(tokenizer, template=template, gguf_name=out.name, system=system)
        _write_atomic(out.parent / "Modelfile", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return out


def refuse_vision(plan, run_dir: Path) -> None:
    """A vision-language run has no GGUF here: llama.cpp keeps the vision encoder in a separate
    mmproj file this exporter does not write, and a text-only file would silently drop the images."""
    from runner.data.vlm import plan_family

    family = plan_family(plan)
    if family is not None:
        raise UserError(f"{run_dir} is a {family.name} vision-language run: runner does not export it to GGUF "
                        "(llama.cpp needs the vision encoder as a separate mmproj file, and a text-only GGUF "
                        "would drop the images)", where=str(run_dir),
                        hint=f"`runner merge {run_dir}` writes a transformers folder that vLLM and transformers "
                             "serve with images; `runner serve` serves the run itself")


def merged_in_memory(run_dir: Path):
    """The run's model (adapter merged into its base) and tokenizer, on the CPU."""
    from runner.serve.generate import load_for_generation

    model, tokenizer, _ = load_for_generation(run_dir)
    return model.to("cpu"), tokenizer


def chat_template(plan, tokenizer) -> str | None:
    """The template the run ships with (the training template with its system-prompt prelude,
    runner.ship.prompt), in a form GGUF runtimes can render."""
    from runner.ship.prompt import deployable_template, template_for_run

    template = template_for_run(plan, tokenizer)
    return deployable_template(template) if template else None


def _source_gguf(plan) -> Path | None:
    if not plan.model.gguf_file:
        return None
    if plan.model.source == "local":
        return Path(plan.model.path) / plan.model.gguf_file
    from huggingface_hub import hf_hub_download

    try:  # training downloaded it: the hub's cache holds it
        return Path(hf_hub_download(plan.model.path, plan.model.gguf_file, revision=plan.model.revision,
                                    local_files_only=True))
    except Exception as err:  # noqa: BLE001 - any miss: say which file is needed
        raise UserError(f"the base GGUF file {plan.model.gguf_file} of {plan.model.path} is not in the hub cache: "
                        f"{err}", where="model.gguf_file",
                        hint="its tokenizer fields are copied from it; download it again (huggingface-cli download)") from None


def _write_model(model, tokenizer, path: Path, quant: str, template, plan, source) -> None:
    from runner.ship.gguf_write import k_quantize, write_gguf

    marker = f"plan_hash={plan.hashes.plan}"
    if quant not in K_QUANTS:
        write_gguf(model, tokenizer, path, quant, chat_template=template, name=plan.name, source_gguf=source,
                   marker=marker)
        return
    base = path.with_name(path.name + ".f16")
    try:
        write_gguf(model, tokenizer, base, "f16", chat_template=template, name=plan.name, source_gguf=source,
                   marker=marker)
        k_quantize(base, path, quant)
    finally:
        base.unlink(missing_ok=True)


def refuse_foreign(path: Path, force: bool) -> None:
    """An existing file is replaced only if runner wrote it, or with --force."""
    if not path.exists() or force:
        return
    if path.is_file() and _written_by_runner(path):
        return
    raise UserError(f"{path} exists and runner did not write it", where=str(path),
                    hint="pass --force to replace it, or -o another name")


def _written_by_runner(path: Path) -> bool:
    if path.name == "Modelfile":
        return path.read_text(encoding="utf-8", errors="replace").startswith(MODELFILE_HEAD)
    try:
        import gguf

        return MARKER_KEY in gguf.GGUFReader(path).fields
    except Exception:  # noqa: BLE001 - not a GGUF file at all: not ours
        return False


MODELFILE_HEAD = "# Modelfile written by runner export"


def _write_atomic(target: Path, write) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
