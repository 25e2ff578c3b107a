"""`runner train cfg.yaml [key=value ...]` (also `python -m runner cfg.yaml` and `accelerate launch -m
runner cfg.yaml`): carry out a Plan and write its run directory.

The order matters: the config is checked before any model loads; the run directory is owned and
judged (refuse / resume / overwrite) before any work but changed only once data and model are
loaded; rank 0 alone prints and writes shared files."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from runner import diskfull, rundir
from runner.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the run's YAML config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.learning_rate=1e-4")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run in output.dir")
    parser.add_argument("--smoke", action="store_true",
                        help="run the recipe's code path on a CPU in seconds: tiny random model of the same family, "
                             "2 steps (runner/smoke.py)")
    parser.add_argument("--resume-changed", action="store_true",
                        help="resume an unfinished run although its plan changed (the changes are printed)")


def run(target, *, overwrite: bool = False, callbacks=(), resume_changed: bool = False):
    """CLI entry (argparse namespace -> exit code) and library entry (Plan -> run directory).
    `callbacks`: extra transformers TrainerCallbacks (library use: probes, early stops)."""
    if isinstance(target, argparse.Namespace):
        from runner.plan import make_plan

        overrides = list(target.overrides)
        if getattr(target, "smoke", False):
            from runner.smoke import smoke_overrides

            overrides += smoke_overrides(target.config, overrides)
        plan = make_plan(target.config, overrides, write_cache=True)
        from runner import quiet
        from runner.launch import EXIT_DIR_ENV

        quiet.quiet_libraries(getattr(target, "debug", False), gguf=bool(plan.model.get("gguf_file")))
        quiet.keep_out_bitsandbytes(plan, training=True)
        if _is_main() and EXIT_DIR_ENV not in os.environ:  # `runner launch` printed them once already
            for warning in plan.warnings:
                print(f"warning: {warning}", file=sys.stderr)
        from runner.signals import EXIT_INTERRUPTED, TrainingInterrupted

        try:
            run_dir = train_plan(plan, overwrite=target.overwrite,
                                 resume_changed=getattr(target, "resume_changed", False))
        except OSError as err:  # a write outside the checkpoint and final saves (metrics, plan)
            diskfull.raise_if_full(err)
            raise
        except TrainingInterrupted as stop:
            _say(f"interrupted by {stop.signame} after step {stop.step}; checkpoint: {stop.checkpoint}\n"
                 f"  run the same command again to resume (exit code {EXIT_INTERRUPTED})")
            return EXIT_INTERRUPTED
        if _is_main():
            print(f"run directory: {run_dir}", file=sys.stderr)
        return 0
    return train_plan(target, overwrite=overwrite, callbacks=callbacks, resume_changed=resume_changed)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _say(message: str) -> None:
    if _is_main() and message:
        print(message, file=sys.stderr)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("runner", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def train_plan(plan, *, overwrite: bool = False, callbacks=(), resume_changed: bool = False) -> Path:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from runner import distributed, runowner

    if plan.distributed["backend"] == "fsdp" and "WORLD_SIZE" not in os.environ:
        _single_process_group()
    distributed.check_launcher(plan)
    world = distributed.world()
    # Rank 0 owns the run directory (marker, lock) before it is judged, for the launch's life; a
    # launch that stops before training leaves the directory as it found it.
    owner = runowner.claim(plan) if world["rank"] == 0 else None
    try:
        return _train(plan, world, overwrite=overwrite, callbacks=callbacks, resume_changed=resume_changed)
    except BaseException:
        if owner is not None:
            owner.abandon()
        raise
    finally:
        if owner is not None:
            owner.release()


def _train(plan, world: dict, *, overwrite: bool, callbacks, resume_changed: bool) -> Path:
    from runner import distributed
    from runner.runowner import first_step_callback

    is_main = world["rank"] == 0
    # Every rank judges the directory; rank 0 alone sets an earlier run aside, plan.json last, so
    # that a rank judging while it moves still reaches the same "fresh" (no process group exists
    # yet: the data cache's wait relies on that).
    launch = rundir.decide(plan, overwrite=overwrite, resume_changed=resume_changed)
    _say(launch.message)
    if launch.action == "done":
        return Path(plan.output["dir"])
    stored = rundir.read_stored_plan(plan.output["dir"]) if launch.action == "resume" else None

    from transformers import set_seed

    from runner import data as pipeline
    from runner import fastpath
    from runner.adapters import PISSA_INIT_DIR, apply_adapter, is_pissa, print_parameters, save_pissa_initial
    from runner.model import load_model, local_device, resolve_dtype, resolve_precision, training_attention

    stage = plan.training["stage"]
    tokenizer = pipeline.load_tokenizer(plan)
    prepared = pipeline.build_datasets(plan, tokenizer)
    pipeline.refuse_untrainable(plan, prepared)  # before the model loads: exit 2 with the reason
    dtype = resolve_dtype(plan.model.get("dtype", "auto"))
    precision = resolve_precision(plan.training.get("precision", "auto"), dtype)
    device = local_device()

    set_seed(plan.training["seed"])  # before the adapter exists: LoRA init is random
    model = load_model(plan, dtype=dtype)
    attention, attention_auto_reason = training_attention(plan, model)
    embeddings_resized = _match_tokenizer(model, tokenizer)
    fast = _fast_path(plan, model, device)
    # Batches come from pinned host memory and reach the GPU without blocking the host.
    fast["non_blocking_copies"] = device.startswith("cuda")
    checkpointing = plan.training.get("gradient_checkpointing")
    fast["checkpointed_layers"] = fastpath.checkpoint_split(model, checkpointing)
    if checkpointing and checkpointing is not True and fast["checkpointed_layers"] is None:
        print(f"warning: training.gradient_checkpointing: {checkpointing} selects layers, but "
              f"{type(model).__name__} has no per-layer checkpointing: every layer is checkpointed", file=sys.stderr)
    if checkpointing and plan.adapter["kind"] != "full":
        model.enable_input_require_grads()  # frozen embeddings would cut the checkpointed graph
    model, info = apply_adapter(model, plan)
    if fast["fused_lora"]:
        from runner.fused_lora import fuse_lora

        fast["fused_lora_layers"] = fuse_lora(model)
    if is_main:
        print_parameters(info)
    ref_model = None
    if stage in ("dpo", "kto") and plan.adapter["kind"] != "lora":
        # With an adapter the reference is the base (adapter off); otherwise a frozen copy.
        ref_model = load_model(plan, dtype=dtype, for_training=False)
        _match_tokenizer(ref_model, tokenizer)
    # Data, tokenizer, template and model are checked and loaded: only now does the directory change.
    run_dir = rundir.prepare(plan, launch, is_main=is_main)
    pissa_init = None
    if is_pissa(plan.adapter):
        pissa_init = str(run_dir / PISSA_INIT_DIR)
        if is_main:
            save_pissa_initial(model, pissa_init)

    backend = distributed.concrete_backend(plan, world["world_size"])
    wrap_class = distributed.decoder_layer_class(model) if backend == "fsdp" else None
    runtime = {
        "world_size": world["world_size"],
        "effective_batch_size": plan.training["batch_per_process"] * world["world_size"],
        "backend": backend,
        "device": device,
        "dtype": dtype,
        "precision": precision,
        "attn_implementation": attention,
        "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "target_modules": info.target_modules,
        "trainable_params": info.trainable_params,
        "total_params": info.total_params,
        "train_rows": len(prepared.train),
        "eval_rows": len(prepared.eval) if prepared.eval is not None else 0,
        "data_stats": prepared.stats,
        "versions": _versions(),
        "fast_path": fast,
    }
    if attention_auto_reason:
        runtime["attn_implementation_auto"] = attention_auto_reason  # why auto did not pick varlen
    if wrap_class:
        runtime["fsdp_wrap_class"] = wrap_class
    if stored and (stored.get("runtime") or {}).get("wandb_run_id"):
        runtime["wandb_run_id"] = stored["runtime"]["wandb_run_id"]
    plan = plan.with_runtime(runtime)

    from runner import quiet
    from runner.metrics import TokenCounter, metrics_callback, run_summary
    from runner.redaction import redact_argv
    from runner.stages import build_trainer, training_arguments
    from runner.tracking import finish_wandb, start_wandb

    quiet.import_trainer_quietly()
    redact_argv(plan.secrets)  # trackers record the command line
    wandb_run = start_wandb(plan, run_dir, is_main=is_main, run_id=runtime.get("wandb_run_id"))
    if wandb_run is not None:
        plan.runtime["wandb_run_id"] = wandb_run.id
    if is_main:
        rundir.write_plan(run_dir, plan)
        rundir.write_config_yaml(run_dir, plan)
    if launch.action == "resume":
        _trim_metrics(run_dir / "metrics.jsonl", int(Path(launch.checkpoint).name.split("-")[-1]))
    elif is_main:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)

    has_eval = prepared.eval is not None and len(prepared.eval) > 0
    extra = distributed.trainer_kwargs(plan, backend, wrap_class, device.split(":")[0])
    if world["world_size"] == 1:
        extra.pop("ddp_backend", None)  # a backend makes accelerate look for a process group
    if device == "cpu":
        extra["use_cpu"] = True
    if fast["non_blocking_copies"]:
        extra["accelerator_config"] = {"non_blocking": True}
    if fast["torch_compile"]:
        extra["torch_compile"] = True
    args = training_arguments(plan, output_dir=str(rundir.checkpoints_dir(run_dir)), precision=precision,
                              has_eval=has_eval, extra=extra)
    if args.n_gpu > 1:  # one process that sees several GPUs: Trainer would wrap the model in nn.DataParallel
        if is_main:
            print(f"note: {args.n_gpu} GPUs are visible to this one process; it trains on {args.device} only "
                  "(`runner launch` starts one process per GPU)", file=sys.stderr)
        args._n_gpu = 1
    collator = pipeline.make_collator(plan, tokenizer) if stage in ("sft", "pt") else None
    from runner.signals import TrainingInterrupted, stop_callback

    stopper = stop_callback()
    trainer_ref = []
    callback = metrics_callback(run_dir / "metrics.jsonl", lambda: trainer_ref[0].runner_tokens if trainer_ref else 0,
                                wandb_run=wandb_run, progress=bool(plan.tracking.get("progress_bar", True)),
                                is_main=is_main)
    trainer = build_trainer(plan, model=model, tokenizer=tokenizer, data=prepared, args=args,
                            collator=TokenCounter(collator) if collator is not None else None,
                            callbacks=[callback, stopper, *callbacks], ref_model=ref_model)
    if is_main:
        trainer.add_callback(first_step_callback(run_dir))  # a replaced run goes once this one trains
    if checkpointing is not True and checkpointing:  # an integer: only the first N layers recompute
        trainer.add_callback(fastpath.checkpoint_callback(checkpointing))
    trainer.runner_chunked_loss = fast["chunked_loss"] and stage in ("sft", "pt")
    distributed.shard_on_cpu(trainer)  # backend fsdp on CPU processes: really FSDP2, not DDP
    if collator is None:  # the TRL trainer built its own
        trainer.data_collator = TokenCounter(trainer.data_collator)
    trainer_ref.append(trainer)
    _quiet_default_callbacks(trainer)

    trainer.train(resume_from_checkpoint=launch.checkpoint)
    if stopper.stopped_at is not None:
        finish_wandb(wandb_run, None)
        if is_main:
            _check_secrets(plan, run_dir)
        done = [p for p in rundir.complete_checkpoints(run_dir) if p.name == f"checkpoint-{stopper.stopped_at}"]
        raise TrainingInterrupted(stopper.stopped_at, str(done[0]) if done else None, stopper.signame)
    final_eval = trainer.evaluate() if has_eval else {}
    summary = run_summary(trainer.state, final_eval)

    with diskfull.guard(run_dir, "the trained model", lambda: diskfull.saved_weights(trainer)):
        save_final(trainer, plan, run_dir, tokenizer, pissa_init=pissa_init, is_main=is_main,
                   embeddings_resized=embeddings_resized)
    # The trackers close before the run directory is searched for secrets: they write until then.
    finish_wandb(wandb_run, {"final_eval_loss": final_eval.get("eval_loss")} if final_eval else None)
    if is_main:
        _finish_run_dir(plan, run_dir, info, summary)
        steps, evaluated = summary["steps"], summary["final_eval_loss"] is not None
        _say(f"finished: {steps} step{'s' * (steps != 1)}, final train loss {summary['final_loss']}"
             + (f", eval loss {summary['final_eval_loss']}" if evaluated else ""))
    if plan.output.get("merge") and is_main:
        from runner.merge import merge_run

        merge_run(run_dir, run_dir / "merged")
    return run_dir


def _single_process_group() -> None:
    """FSDP needs a process group even on one device; without a launcher, be a world of one (what
    `torchrun --nproc_per_node 1` would set)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _fast_path(plan, model, device: str) -> dict:
    """The fast path's concrete switches (runner.fastpath.decide), Liger applied to the base model
    before the adapter wraps it; recorded in plan.runtime."""
    from runner import fastpath

    model_type = getattr(model.config, "model_type", "")
    fast = fastpath.decide(plan.training, device.split(":")[0], model_type,
                           world_size=int(os.environ.get("WORLD_SIZE", "1")), sharded=_sharded(plan))
    # decide() picks Liger under auto only where apply_liger works: a failure here is `liger: true`.
    if fast["liger"] and not fastpath.apply_liger(model, model_type):
        raise UserError(f"training.liger is true but Liger kernels are not available for {model_type!r} here",
                        where="training.liger", hint="pip install 'runner[liger]' on the GPU machine, or use auto")
    fast["fused_lora"] = fastpath.decide_fused_lora(plan.training, device.split(":")[0], plan.adapter,
                                                    bool((plan.quantization or {}).get("bits")), _sharded(plan))
    return fast


def _sharded(plan) -> bool:
    from runner.launch_config import zero_stage

    backend = plan.distributed["backend"]
    return backend == "fsdp" or (backend == "deepspeed" and zero_stage({"distributed": plan.distributed}) == 3)


def _match_tokenizer(model, tokenizer) -> bool:
    """Tokens added by special_tokens.add need embedding rows; pad/eos ids go into the configs.
    Returns whether the embeddings grew."""
    rows = model.get_input_embeddings().weight.shape[0]
    resized = len(tokenizer) > rows
    if resized:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        if tokenizer.eos_token_id is not None:
            model.generation_config.eos_token_id = tokenizer.eos_token_id
    return resized


def _quiet_default_callbacks(trainer) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


def _trim_metrics(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop their old lines."""
    if not _is_main() or not path.is_file():
        return
    import json

    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the torn last line of a killed launch
        # A summary row closes a launch; the resumed launch writes its own.
        if isinstance(row, dict) and row.get("step", 0) <= step and row.get("kind") != "summary":
            keep.append(line)
    rundir.write_text_atomic(path, "".join(line + "\n" for line in keep))


def save_final(trainer, plan, run_dir: Path, tokenizer, *, pissa_init: str | None, is_main: bool,
               embeddings_resized: bool = False) -> None:
    """The trained adapter (or model) and the tokenizer with its training chat template."""
    from runner.adapters import save_adapter
    from runner.model import drop_gguf_quantizer

    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "config"):
        model.config.use_cache = True  # what users of the saved model want
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        if pissa_init:
            _say("warning: a PiSSA adapter saved under FSDP/DeepSpeed is not converted; it applies to the residual base")
        from runner.distributed import prepare_final_save

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
        tokenizer.save_pretrained(str(run_dir))
        if pissa_init:
            import shutil

            shutil.rmtree(pissa_init, ignore_errors=True)


def _finish_run_dir(plan, run_dir: Path, info, summary: dict) -> None:
    from runner.card import write_model_card
    from runner.metrics import plot_losses

    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
    rundir.write_plan(run_dir, plan)
    write_model_card(run_dir, plan, info, summary)
    _check_secrets(plan, run_dir)
    rundir.mark_complete(run_dir, {**summary, "plan_hash": plan.hashes.get("plan")})


def _check_secrets(plan, run_dir: Path) -> None:
    """The last guard on secrets (runner.redaction): a file that holds one is scrubbed, and the run
    fails without its completion marker, naming the files."""
    from runner.redaction import leaked_files, scrub

    leaked = leaked_files(run_dir, plan.secrets or {})
    if leaked:
        scrub(leaked, plan.secrets)
        names = ", ".join(str(p.relative_to(run_dir)) for p in leaked)
        raise UserError(f"a secret value was written into {names} under {run_dir}; it has been overwritten "
                        "with '*' there, but anything these files were sent to has seen it",
                        where="output.dir",
                        hint="this is a bug in runner: please report it; revoke the token or key if a tracker "
                             "synced these files, then run the same command again")
