"""The training recipe: a Plan carried out, top to bottom.

    claim and judge the run directory -> set up data -> decide the runtime -> set up the model
    -> open the run (directory, trackers, plan.json) -> set up the trainer -> train -> save
    -> evaluate (the config's `evaluation:` section, once the run is complete)

Everything that can be checked (config, data, template, the model's architecture and files) is
checked before the run directory is touched. Every launch-time decision is made once, in
runner.train.runtime.decide_runtime; the steps below only carry them out. Rank 0 alone prints and
writes the run's shared files."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from runner import quiet, rundir
from runner.evaluate import command as evaluation
from runner.plan.plan import Launch, Plan
from runner.rundir import diskfull
from runner.rundir.owner import claim
from runner.train import distributed, finish, runtime as runtimes, stages, trackers as tracker_runs, tracking
from runner.train.metrics import run_summary
from runner.train.redaction import redact_argv
from runner.train.trainer import checkpoint_failure


@dataclass
class Data:
    tokenizer: object
    train: object                  # datasets.Dataset
    eval: object | None
    stats: dict
    processor: object | None = None  # a vision-language model's processor (images into the batches)


@dataclass
class Model:
    model: object
    reference: object | None       # a frozen copy of the base, for stages that compare against one
    info: object                   # runner.train.adapters.AdapterInfo
    fused_lora_layers: int = 0
    embeddings_resized: bool = False   # special_tokens.add grew the vocabulary


@dataclass
class Run:
    plan: Plan                     # with the Runtime and this launch's record
    dir: Path
    trackers: object               # runner.train.trackers.Trackers: W&B, TensorBoard, MLflow, SwanLab (rank 0)
    pissa_init: str | None         # PiSSA's adapter as initialised, for the final conversion


def train(plan: Plan, *, overwrite: bool = False, callbacks=(), resume_changed: bool = False) -> Path:
    """Train `plan` into plan.output.dir; returns the run directory. `callbacks`: extra transformers
    TrainerCallbacks (library use: probes, early stops). Raises TrainingInterrupted on a signal."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if plan.distributed.backend == "fsdp" and "WORLD_SIZE" not in os.environ:
        distributed.single_process_group()
    distributed.check_launcher(plan)
    stage = stages.get(plan.training.stage)
    stage.check(plan)
    from runner.train import vision

    vision.check(plan)
    env = runtimes.environment()
    # Rank 0 owns the run directory (marker, lock) before it is judged, for the launch's life; a
    # launch that stops before training leaves the directory as it found it.
    owner = claim(plan) if env.rank == 0 else None
    try:
        return _train(plan, stage, env, overwrite=overwrite, callbacks=callbacks, resume_changed=resume_changed)
    except BaseException:
        if owner is not None:
            owner.abandon()
        raise
    finally:
        if owner is not None:
            owner.release()


def _train(plan: Plan, stage, env, *, overwrite: bool, callbacks, resume_changed: bool) -> Path:
    is_main = env.rank == 0
    # Every rank judges the directory; rank 0 alone sets an earlier run aside, plan.json last, so
    # that a rank judging while it moves still reaches the same "fresh".
    launch = rundir.decide(plan, overwrite=overwrite, resume_changed=resume_changed)
    say(launch.message, is_main)
    if launch.action == "done":
        return Path(plan.output.dir)
    evaluation.check_before_training(plan, is_main)
    data = setup_data(plan)
    plan = decide(plan, env, data, is_main)
    model = setup_model(plan, stage, data.tokenizer, is_main)
    run = open_run(plan, launch, data, model, is_main)
    trainer, stopper = setup_trainer(run.plan, stage, model, data, run.dir, run.trackers, callbacks, is_main)
    train_steps(trainer, launch, stopper, run, is_main)
    save(trainer, run, data, model, is_main)
    del trainer, model, data  # the evaluation loads the saved run afresh, as `runner eval` does
    evaluation.after_training(run.plan, run.dir, is_main)
    return run.dir


def setup_data(plan: Plan) -> Data:
    """The tokenizer (with the training template attached) and the tokenized datasets, from the
    cache when the data hash matches."""
    from runner import data as pipeline

    tokenizer = pipeline.load_tokenizer(plan)
    prepared = pipeline.build_datasets(plan, tokenizer)
    from runner.data.vlm import load_processor, plan_family

    processor = load_processor(plan, tokenizer) if plan_family(plan) is not None else None
    return Data(tokenizer, prepared.train, prepared.eval, prepared.stats, processor)


def decide(plan: Plan, env, data: Data, is_main: bool) -> Plan:
    """Refuse data that would train nothing, then make every launch decision (the Runtime joins the
    Plan and its hash)."""
    from runner import data as pipeline

    pipeline.refuse_untrainable(plan, data)  # before the model loads: exit 2 with the reason
    decided, notes = runtimes.decide_runtime(plan, env, runtimes.model_facts(plan), train_rows(plan, data, env))
    for note in notes:
        say(note if note.startswith("note:") else f"warning: {note}", is_main)
    return plan.with_runtime(decided)


def train_rows(plan: Plan, data: Data, env) -> int:
    """The training rows; for a stream (no length) the rows max_steps reads, so that an epoch is the run."""
    from runner.data.streaming import row_count

    rows = row_count(data.train)
    if rows is None:
        rows = plan.training.max_steps * plan.training.batch_per_process * env.world_size
    return rows


def setup_model(plan: Plan, stage, tokenizer, is_main: bool) -> Model:
    """The base model as the Runtime says (dtype, attention, quantization, Liger), its embeddings
    matched to the tokenizer, the adapter applied, and the reference model when the stage needs one."""
    from transformers import set_seed

    from runner.train.adapters import apply_adapter, print_parameters
    from runner.train.model import load_model

    rt = plan.runtime
    set_seed(plan.training.seed)  # before the adapter exists: LoRA init is random
    model = load_model(plan, dtype=rt.dtype, attn_implementation=rt.attn_implementation,
                       gradient_checkpointing=bool(plan.training.gradient_checkpointing), auto_class=stage.auto_class)
    resized = match_tokenizer(model, tokenizer)
    if rt.fast_path.liger:
        from runner.train.fast.liger import apply_liger

        apply_liger(model, layers=not rt.fast_path.torch_compile)
    if plan.training.gradient_checkpointing and plan.adapter.kind != "full":
        model.enable_input_require_grads()  # frozen embeddings would cut the checkpointed graph
    if plan_is_vision(plan):
        from runner.train import vision

        model, info = vision.apply_adapter(model, plan, rt)
    else:
        model, info = apply_adapter(model, plan.adapter, rt)
    from runner.train.fast.layers import swap_layers

    fused, note = swap_layers(model, rt.fast_path)
    if note:
        say(note, is_main)
    if is_main:
        print_parameters(info)
    reference = None
    if stage.needs_reference(plan):
        reference = load_model(plan, dtype=rt.dtype, attn_implementation=rt.attn_implementation, for_training=False)
        match_tokenizer(reference, tokenizer)
    return Model(model, reference, info, fused, resized)


def open_run(plan: Plan, launch, data: Data, model: Model, is_main: bool) -> Run:
    """Data and model are checked and loaded: only now does the run directory change. Trackers start
    with the command line's secrets redacted; plan.json records the launch."""
    run_dir = rundir.prepare(plan, launch, is_main=is_main)
    pissa_init = save_pissa_init(plan, model, run_dir, is_main)
    stored = rundir.read_stored_plan(run_dir) if launch.action == "resume" else None
    quiet.import_trainer_quietly()
    redact_argv(plan.secrets)  # trackers record the command line
    wandb_run = tracking.start_wandb(plan, run_dir, is_main=is_main, run_id=_stored_wandb_id(stored))
    trackers = tracker_runs.start(plan, run_dir, wandb_run, is_main=is_main, stored=stored,
                                  resume_step=tracker_runs.resume_step(launch.checkpoint))
    plan = plan.with_launch(launch_record(data, model, wandb_run, plan, trackers.run_ids()))
    if is_main:
        rundir.write_plan(run_dir, plan)
        rundir.write_config_yaml(run_dir, plan)
        rundir.restart_metrics(run_dir, launch.checkpoint)
    return Run(plan, run_dir, trackers, pissa_init)


def setup_trainer(plan: Plan, stage, model: Model, data: Data, run_dir: Path, trackers, callbacks,
                  is_main: bool):
    """The stage's trainer over the pipeline's datasets, with runner's callbacks."""
    from runner.train import hooks, nonfinite
    from runner.train.arguments import common_arguments
    from runner.train.metrics import metrics_callback
    from runner.train.signals import stop_callback
    from runner.rundir.owner import first_step_callback
    from runner.train.trainer import TrainerOptions, checkpoint_callback

    rt = plan.runtime
    checkpoints = str(rundir.checkpoints_dir(run_dir))
    has_eval = data.eval is not None and len(data.eval) > 0
    args = stage.arguments(plan, common_arguments(plan, rt, output_dir=checkpoints, has_eval=has_eval))
    hooks.one_device(args)
    options = TrainerOptions(row_tokens=stage.row_tokens, max_nonfinite=plan.training.max_nonfinite,
                             chunked_loss=rt.fast_path.chunked_loss, param_groups=loraplus_groups(plan, args),
                             **optimizer_options(plan, rt))
    stopper = stop_callback()
    runner_callbacks = [
        metrics_callback(run_dir / "metrics.jsonl", options.tally, prefixes=stage.metric_prefixes,
                         wandb_run=trackers, progress=plan.tracking.progress_bar, is_main=is_main),
        stopper,
        nonfinite.guard_callback(options.guard),
        checkpoint_callback(checkpoints, plan.hashes.plan, plan.output.save_total_limit, plan.output.keep_best),
    ]
    if plan.training.early_stopping is not None and args.eval_strategy != "no":
        from runner.train.stopping import early_stopping_callback

        runner_callbacks.append(early_stopping_callback(plan, is_main))
    if is_main:
        runner_callbacks.append(first_step_callback(run_dir))  # a replaced run goes once this one trains
    if rt.fast_path.checkpointed_layers and plan.training.gradient_checkpointing is not True:
        from runner.train.fast.checkpointing import checkpoint_callback as selective

        runner_callbacks.append(selective(int(plan.training.gradient_checkpointing)))
    extra = {"ref_model": model.reference} if stage.takes_reference else {}
    extra.update(stage.trainer_inputs(plan, data.tokenizer))
    if data.processor is not None:
        from runner.data.vlm_collate import collator_for

        collator = collator_for(stage.name, data.processor, plan)
    else:
        collator = stage.collator(plan, data.tokenizer)
    trainer = stage.trainer_class()(
        model=model.model, args=args, train_dataset=data.train, eval_dataset=data.eval,
        processing_class=data.processor or data.tokenizer, data_collator=collator,
        callbacks=[*runner_callbacks, *callbacks], runner=options, **extra)
    distributed.shard_on_cpu(trainer)  # backend fsdp on CPU processes: really FSDP2, not DDP
    quiet_default_callbacks(trainer)
    return trainer, stopper


def train_steps(trainer, launch, stopper, run: Run, is_main: bool) -> None:
    """Train from the launch's checkpoint. A signal: a complete checkpoint and TrainingInterrupted; a
    full disk while writing a checkpoint: a UserError saying how much room it needs."""
    try:
        trainer.train(resume_from_checkpoint=launch.checkpoint)
    except diskfull.save_errors() as err:
        failure = checkpoint_failure(err, trainer)
        if failure is None:
            raise
        raise failure from err
    if stopper.stopped_at is not None:
        run.trackers.finish(None, interrupted=True)
        if is_main:
            finish.check_secrets(run.plan, run.dir)
        raise _interrupted(run.dir, stopper)


def save(trainer, run: Run, data: Data, model: Model, is_main: bool) -> None:
    """The final evaluation, the trained weights and tokenizer, then (the trackers closed, since they
    write into the run directory until then) the card, the secret check and RUN_COMPLETE."""
    from runner.train.stopping import outcome

    ended = outcome(run.plan, trainer)
    best = ended.get("best") or {}
    if best.get("step") is not None:  # keep_best: the final weights were evaluated at their step
        final_eval = {"eval_loss": best["eval_loss"]}
    else:
        final_eval = trainer.evaluate() if data.eval is not None and len(data.eval) else {}
    summary = {**run_summary(trainer.state, final_eval), **ended, **stage_summary(run.plan, final_eval)}
    if ended:
        run = dataclasses.replace(run, plan=run.plan.with_launch(dataclasses.replace(run.plan.launch, outcome=ended)))
    with diskfull.guard(run.dir, "the trained model", lambda: diskfull.saved_weights(trainer)):
        finish.save_final(trainer, run.plan, run.dir, data.processor or data.tokenizer, pissa_init=run.pissa_init, is_main=is_main,
                          embeddings_resized=model.embeddings_resized)
    run.trackers.finish({"final_eval_loss": final_eval.get("eval_loss")} if final_eval else None)
    if is_main:
        finish.finish_run_dir(run.plan, run.dir, model.info, summary)
        steps, evaluated = summary["steps"], summary["final_eval_loss"] is not None
        say(f"finished: {steps} step{'s' * (steps != 1)}, final train loss {summary['final_loss']}"
            + (f", eval loss {summary['final_eval_loss']}" if evaluated else ""), is_main)
    if run.plan.output.merge and is_main:
        from runner.ship.merge import merge_run

        merge_run(run.dir, run.dir / "merged")


def optimizer_options(plan: Plan, rt) -> dict:
    """TrainerOptions for the optimizers of runner.train.optimizers: Muon built by runner, and the
    non-finite guard over those and GaLore / APOLLO."""
    from runner.config.optimizer_checks import layerwise, low_rank
    from runner.train.optimizers import muon_factory

    name = plan.training.optimizer
    return {"optimizer": muon_factory(plan, rt), "activation_offloading": plan.training.activation_offloading,
            "guard_any": name == "muon" or (low_rank(name) and not layerwise(name))}


def loraplus_groups(plan: Plan, args):
    """LoRA+ parameter groups (B matrices at `loraplus_lr_ratio` times the rate), or None."""
    adapter = plan.adapter
    if adapter.kind != "lora" or not adapter.loraplus_lr_ratio:
        return None
    from runner.train.adapters import loraplus_param_groups

    def groups(model):
        return loraplus_param_groups(model, lr=args.learning_rate, ratio=adapter.loraplus_lr_ratio,
                                     lr_embedding=adapter.loraplus_lr_embedding, weight_decay=args.weight_decay)

    return groups


def stage_summary(plan: Plan, final_eval: dict) -> dict:
    """The stage's own results of the final evaluation (a reward model's pairwise accuracy)."""
    from runner.train.metrics import _rounded

    wanted = stages.get(plan.training.stage).summary_metrics
    return {name: _rounded(final_eval[key]) for key, name in wanted.items() if key in final_eval}


def launch_record(data: Data, model: Model, wandb_run, plan: Plan, tracker_ids: dict | None = None) -> Launch:
    import platform

    from runner.plan.hashing import library_versions

    return Launch(trainable_params=model.info.trainable_params, total_params=model.info.total_params,
                  fused_lora_layers=model.fused_lora_layers,
                  train_rows=train_rows(plan, data, plan.runtime), eval_rows=len(data.eval) if data.eval is not None else 0,
                  data_stats=data.stats, versions={"python": platform.python_version(), **library_versions()},
                  wandb_run_id=wandb_run.id if wandb_run is not None else None, tracker_runs=tracker_ids)


def save_pissa_init(plan: Plan, model: Model, run_dir: Path, is_main: bool) -> str | None:
    """PiSSA's adapter as initialised, for the final save's conversion to a plain LoRA delta."""
    from runner.train.adapters import PISSA_INIT_DIR, is_pissa, save_pissa_initial

    if not is_pissa(plan.adapter):
        return None
    path = str(run_dir / PISSA_INIT_DIR)
    if is_main:
        save_pissa_initial(model.model, path)
    return path


def plan_is_vision(plan: Plan) -> bool:
    from runner.data.vlm import plan_family

    return plan_family(plan) is not None


def match_tokenizer(model, tokenizer) -> bool:
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


def quiet_default_callbacks(trainer) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


def _stored_wandb_id(stored: dict | None) -> str | None:
    launch = (stored or {}).get("launch") or {}
    return launch.get("wandb_run_id")


def _interrupted(run_dir: Path, stopper):
    from runner.train.signals import TrainingInterrupted

    done = [p for p in rundir.complete_checkpoints(run_dir) if p.name == f"checkpoint-{stopper.stopped_at}"]
    return TrainingInterrupted(stopper.stopped_at, str(done[0]) if done else None, stopper.signame)


def say(message: str, is_main: bool) -> None:
    if is_main and message:
        print(message, file=sys.stderr)
