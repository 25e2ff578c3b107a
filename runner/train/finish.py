"""The end of a run: the trained adapter (or model) and the tokenizer saved, then the run directory
finished (loss.png, plan.json, the model card, the secret check and RUN_COMPLETE, written last)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from runner import rundir
from runner.errors import UserError


def save_final(trainer, plan, run_dir: Path, tokenizer, *, pissa_init: str | None, is_main: bool,
               embeddings_resized: bool = False) -> None:
    """The trained adapter (or model) and the tokenizer with its training chat template, behind the
    training defaults (system prompt) that other tools must apply too (runner.ship.prompt)."""
    from runner.train.adapters import save_adapter
    from runner.train.model import drop_gguf_quantizer

    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "config"):
        model.config.use_cache = True  # what users of the saved model want
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        if pissa_init and is_main:
            print("warning: a PiSSA adapter saved under FSDP/DeepSpeed is not converted; it applies to the "
                  "residual base", file=sys.stderr)
        from runner.train.distributed import prepare_final_save

        prepare_final_save(trainer)  # a sharded state dict type would save nothing
        trainer.save_model(str(run_dir))  # gathers the sharded weights (collective: every rank calls it)
        if is_main:
            (run_dir / "training_args.bin").unlink(missing_ok=True)
    elif is_main:
        if hasattr(model, "peft_config"):
            save_adapter(model, str(run_dir), pissa_initial=pissa_init, embeddings_resized=embeddings_resized)
        else:
            drop_gguf_quantizer(model)
            model.save_pretrained(str(run_dir), safe_serialization=True)
    if is_main:
        from runner.ship.prompt import save_tokenizer

        save_tokenizer(tokenizer, plan, run_dir)
        if pissa_init:
            shutil.rmtree(pissa_init, ignore_errors=True)


def finish_run_dir(plan, run_dir: Path, info, summary: dict) -> None:
    """After the trackers have closed (they write into the run directory until then)."""
    from runner.train.card import write_model_card
    from runner.train.metrics import plot_losses

    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
    rundir.write_plan(run_dir, plan)
    write_model_card(run_dir, plan, info, summary)
    check_secrets(plan, run_dir)
    rundir.mark_complete(run_dir, {**summary, "plan_hash": plan.hashes.plan})


def check_secrets(plan, run_dir: Path) -> None:
    """The last guard on secrets (runner.train.redaction): a file that holds one is scrubbed, and the
    run fails without its completion marker, naming the files."""
    from runner.train.redaction import leaked_files, scrub

    leaked = leaked_files(run_dir, plan.secrets)
    if leaked:
        scrub(leaked, plan.secrets)
        names = ", ".join(str(p.relative_to(run_dir)) for p in leaked)
        raise UserError(f"a secret value was written into {names} under {run_dir}; it has been overwritten "
                        "with '*' there, but anything these files were sent to has seen it",
                        where="output.dir",
                        hint="this is a bug in runner: please report it; revoke the token or key if a tracker "
                             "synced these files, then run the same command again")
