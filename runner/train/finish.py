"""The end of a run: the trained adapter (or model) and the tokenizer saved, then the run directory
finished (loss.png, plan.json, the model card, the secret check and RUN_COMPLETE, written last)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from runner import rundir
from runner.errors import UserError


def save_final(trainer, plan, run_dir: Path, tokenizer, *, pissa_init: str | None, is_main: bool) -> None:
    """The trained adapter (or model) and the tokenizer with its training chat template."""
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
            save_adapter(model, str(run_dir), pissa_initial=pissa_init)
        else:
            drop_gguf_quantizer(model)
            model.save_pretrained(str(run_dir), safe_serialization=True)
    if is_main:
        tokenizer.save_pretrained(str(run_dir))
        if pissa_init:
            shutil.rmtree(pissa_init, ignore_errors=True)


def finish_run_dir(plan, run_dir: Path, info, final_eval: dict) -> None:
    from runner.train.card import write_model_card
    from runner.train.metrics import plot_losses, read_metrics

    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
    train_rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "train"]
    summary = {
        "steps": train_rows[-1]["step"] if train_rows else 0,
        "final_loss": train_rows[-1]["loss"] if train_rows else None,
        "final_eval_loss": final_eval.get("eval_loss"),
    }
    rundir.write_plan(run_dir, plan)
    write_model_card(run_dir, plan, info, summary)
    # Short values could match weight bytes by chance; real tokens and keys are long.
    secrets = [v for v in plan.secrets.values() if isinstance(v, str) and len(v) >= 8]
    leaked = rundir.files_containing(run_dir, secrets) if secrets else []
    if leaked:
        raise UserError(f"a secret value was found in {', '.join(leaked)}; delete these files",
                        where="output.dir", hint="this is a bug in runner: please report it")
    rundir.mark_complete(run_dir, {**summary, "plan_hash": plan.hashes.plan})
