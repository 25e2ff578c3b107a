"""Semantic checks the schema cannot express: combinations that are valid key by key but fail (often
late, on a GPU, after the model loaded) or silently do the wrong thing. Each finding names the keys
and the fix. Pure: reads the validated config and the file system, imports no ML library."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from runner.errors import UserError

from runner.config.schema import stages

# The formats each stage trains on, from the schema's x-stages table (one table: lint and the
# pipeline agree).
STAGE_FORMATS = {name: set(entry["formats"]) for name, entry in stages().items()}


@dataclass
class Findings:
    errors: list
    warnings: list


def check(cfg: dict, raw: dict, where) -> Findings:
    """`cfg` has defaults filled; `raw` is the config as written (to tell set keys from defaults)."""
    errors: list[UserError] = []
    warnings: list[UserError] = []

    def error(path, message, hint=None):
        errors.append(UserError(f"{'.'.join(map(str, path))}: {message}", where=where(path), hint=hint))

    def warn(path, message, hint=None):
        warnings.append(UserError(f"{'.'.join(map(str, path))}: {message}", where=where(path), hint=hint))

    model, adapter, quant = cfg["model"], cfg["adapter"], cfg["quantization"]
    training, seq, dist, tmpl = cfg["training"], cfg["sequence"], cfg["distributed"], cfg["template"]
    stage, kind, bits = training["stage"], adapter["kind"], quant["bits"]
    raw_adapter = raw.get("adapter") or {}

    if bits and kind in ("full", "none", "freeze"):
        error(("quantization", "bits"), f"{bits}-bit weights cannot be trained directly (adapter.kind: {kind})",
              "use adapter.kind: lora for QLoRA, or remove quantization")
    if bits and adapter["init"].startswith("pissa"):
        error(("adapter", "init"), f"PiSSA initialisation needs unquantized weights; the base is loaded in {bits}-bit",
              "remove quantization, or use init: default (PEFT refuses PiSSA on quantized layers)")
    if kind != "lora":
        for key in ("dora", "rslora", "loraplus_lr_ratio", "init"):
            if key in raw_adapter and raw_adapter[key] not in (False, None, "default"):
                error(("adapter", key), f"only applies to adapter.kind: lora (kind is {kind})",
                      "set adapter.kind: lora or remove the key")
    if kind != "freeze":
        for key in ("trainable_layers", "trainable_modules"):
            if raw_adapter.get(key):
                error(("adapter", key), f"only applies to adapter.kind: freeze (kind is {kind})")
    elif not adapter["trainable_layers"] and not adapter["trainable_modules"]:
        error(("adapter", "kind"), "freeze trains nothing unless trainable_layers or trainable_modules is set",
              "e.g. adapter: {kind: freeze, trainable_layers: 2}")
    if adapter["dora"] and adapter["init"].startswith("pissa"):
        warn(("adapter", "init"), "PiSSA with DoRA is untested in PEFT; expect differences")

    for group in ("datasets", "eval_datasets"):
        for i, ds in enumerate(cfg[group]):
            if ds["format"] not in STAGE_FORMATS[stage]:
                want = ", ".join(sorted(STAGE_FORMATS[stage]))
                error((group, i, "format"), f"format {ds['format']!r} cannot train stage {stage!r} (needs {want})",
                      "dpo/orpo/simpo/cpo/rm take `preference` data, kto takes `kto`, sft takes chat/instruction formats, pt takes text")
    if seq["packing"] and model["trust_remote_code"]:
        warn(("sequence", "packing"), "a model with its own code may ignore per-sample position ids; packed samples "
             "could then attend to each other", "check its attention code, or set sequence.packing: false")
    if seq["packing"] and stages()[stage]["rows"] != "sequence":
        error(("sequence", "packing"), f"stage {stage} trains on prompt/answer pairs and cannot pack",
              "set sequence.packing: false")
    if seq["truncation"] == "split" and stage != "pt":
        error(("sequence", "truncation"), f"split cuts long samples into pieces for continued pretraining; stage {stage} "
              "would train pieces of a conversation without their prompt", "use truncate, drop or error")
    has_eval = bool(cfg["eval_datasets"]) or cfg["val_size"] > 0
    for key in ("eval_every", "evals_per_epoch"):
        if training[key] and not has_eval:
            error(("training", key), "evaluation is asked for but there is no eval data",
                  "add eval_datasets or val_size (e.g. val_size: 0.1)")
    check_evaluation(cfg, has_eval, error)
    if stage == "rm" and cfg["output"]["merge"]:
        error(("output", "merge"), "a reward model is not merged into a language model", "drop output.merge: "
              "load the run with AutoModelForSequenceClassification (docs/rl.md)")
    if stage == "rm" and (cfg.get("evaluation") or {}).get("tasks"):
        error(("evaluation", "tasks"), "lm-evaluation-harness tasks score language models; stage rm trains a "
              "reward model (a score head)", "drop evaluation.tasks: the run's pairwise accuracy on its eval "
              "split is in metrics and the card, and `runner eval RUN_DIR` scores it again")
    if cfg["val_size"] >= 1 and cfg["val_size"] != int(cfg["val_size"]):
        error(("val_size",), "a val_size of 1 or more counts rows and must be a whole number")

    if tmpl["name"] == "jinja" and not tmpl["jinja"]:
        error(("template", "jinja"), "template.name is jinja but no template file is given",
              "set template.jinja: path/to/template.jinja")
    if tmpl["jinja"] and tmpl["name"] != "jinja":
        error(("template", "name"), f"template.jinja is set but template.name is {tmpl['name']!r}",
              "set template.name: jinja to use the file, or remove template.jinja")
    if tmpl["enable_thinking"] is not None and tmpl["name"] not in ("qwen3", "tokenizer", "jinja"):
        warn(("template", "enable_thinking"), f"the {tmpl['name']} template has no thinking mode; ignored")
    if stage == "pt" and "template" in raw:
        warn(("template",), "stage pt trains on plain text; the chat template is used only for chat formats")

    for other in ("dpo", "kto", "orpo", "rm", "simpo", "cpo"):
        if other != stage and other in (raw.get("training") or {}):
            warn(("training", other), f"these settings apply to stage {other}, but the stage is {stage}; ignored")
    if training["warmup_steps"] is not None and "warmup_ratio" in (raw.get("training") or {}):
        warn(("training", "warmup_ratio"), "warmup_steps is set and wins over warmup_ratio")

    if model["trust_remote_code"]:
        warn(("model", "trust_remote_code"),
             "runs Python code shipped with the model on this machine with your permissions",
             "only for models whose repository you trust; pin model.revision to a reviewed commit")
    if model["attn_implementation"] == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        warn(("model", "attn_implementation"), "flash_attention_2 is not installed here; training will stop at load",
             "pip install 'runner[flash]' on the GPU machine, or use sdpa")

    backend = dist["backend"]
    from runner.config.optimizer_checks import check_optimizer
    from runner.plan.launch_settings import check_distributed, sharded as is_sharded

    # A user's own DeepSpeed file decides the stage that really runs, not the YAML default.
    sharded = is_sharded(cfg)
    if bits == 4 and sharded and quant["quant_storage"] != model["dtype"]:
        error(("quantization", "quant_storage"),
              f"QLoRA under {'FSDP' if backend == 'fsdp' else 'ZeRO-3'} shards the 4-bit weights and needs "
              f"quant_storage equal to model.dtype (got {quant['quant_storage']} vs {model['dtype']})",
              "set model.dtype: bfloat16 and quantization.quant_storage: bfloat16")
    if bits == 8 and sharded:
        error(("quantization", "bits"), "8-bit weights cannot be sharded by FSDP or ZeRO-3",
              "use bits: 4 with quant_storage matching model.dtype, or backend: ddp")
    if backend == "fsdp" and dist["fsdp"]["activation_checkpointing"] and training["gradient_checkpointing"]:
        error(("training", "gradient_checkpointing"),
              "activation checkpointing is on twice (training.gradient_checkpointing and distributed.fsdp.activation_checkpointing)",
              "keep one: distributed.fsdp.activation_checkpointing under FSDP")
    if sharded and kind == "lora" and adapter["dora"]:
        warn(("adapter", "dora"), "DoRA with sharded parameters gathers each layer's weight norm every step (slow)")
    if backend == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        warn(("distributed", "backend"), "deepspeed is not installed here", "pip install 'runner[deepspeed]'")
    if backend in ("fsdp", "deepspeed") and training["optimizer"] in ("paged_adamw_8bit", "adamw_8bit", "lion_8bit") and sharded:
        warn(("training", "optimizer"), "8-bit optimizers do not shard their state under FSDP/ZeRO-3")
    if dist["num_machines"] > 1 and not dist["main_address"]:
        warn(("distributed", "main_address"), "several machines but no main_address; MASTER_ADDR must be set on each")
    uri = ((cfg.get("tracking") or {}).get("mlflow") or {}).get("tracking_uri")
    if isinstance(uri, str) and uri_has_credentials(uri):
        # The URI is written to plan.json and the card: never repeat it (it holds a password or token).
        error(("tracking", "mlflow", "tracking_uri"), "holds credentials (user:password@ or a token in the query)",
              "give the bare address here and the credentials through MLFLOW_TRACKING_USERNAME / "
              "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN in the environment")
    check_optimizer(cfg, raw, error, warn)
    for severity, path, message, *hint in check_distributed(cfg, raw):
        (error if severity == "error" else warn)(path, message, hint[0] if hint else None)
    from runner.config.checks_scale import check_scale

    check_scale(cfg, raw, error, warn)
    from runner.config.checks_fp8 import check_fp8

    check_fp8(cfg, error)
    return Findings(errors, warnings)


def uri_has_credentials(uri: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    query = parts.query.lower()
    return parts.password is not None or any(k in query for k in ("token=", "password=", "secret=", "key="))


# Metric names whose best value is the lowest / the highest (early stopping and keep_best).
LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "error")
HIGHER_IS_BETTER = ("accurac", "reward", "margin", "score", "bleu", "rouge", "exact_match", "f1", "precision", "recall")


def eval_metric_name(metric: str) -> str:
    """The name the Trainer logs an evaluation metric under: with its `eval_` prefix."""
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def best_direction(metric: str) -> str | None:
    """min or max for a metric's name (a rewards margin is better high, a loss low); None: unknown."""
    name = metric.lower()
    if any(word in name for word in LOWER_IS_BETTER):
        return "min"
    if any(word in name for word in HIGHER_IS_BETTER):
        return "max"
    return None


def check_evaluation(cfg: dict, has_eval: bool, error) -> None:
    """Evaluation and checkpoint cadences (steps or per epoch, one of each), early stopping and
    keep_best: what each needs, before anything loads."""
    training, output = cfg["training"], cfg["output"]
    if training["eval_every"] and training["evals_per_epoch"]:
        error(("training", "evals_per_epoch"), "eval_every and evals_per_epoch are both set",
              "keep one: eval_every counts optimizer steps, evals_per_epoch evaluations per epoch")
    if output["save_every"] and output["saves_per_epoch"]:
        error(("output", "saves_per_epoch"), "save_every and saves_per_epoch are both set",
              "keep one: save_every counts optimizer steps, saves_per_epoch checkpoints per epoch")
    evaluates = bool(training["eval_every"] or training["evals_per_epoch"])
    stopping = training["early_stopping"]
    for path, wanted in ((("training", "early_stopping"), stopping is not None),
                         (("output", "keep_best"), output["keep_best"])):
        if not wanted:
            continue
        if not has_eval:
            error(path, "needs evaluations, and there is no eval data",
                  "add eval_datasets or val_size (e.g. val_size: 0.1), and training.eval_every or evals_per_epoch")
        elif not evaluates:
            error(path, "needs evaluations during training, and none are asked for",
                  "set training.eval_every (steps) or training.evals_per_epoch")
    if stopping is not None:
        metric = eval_metric_name(stopping["metric"])
        if stopping["mode"] == "auto" and best_direction(metric) is None:
            error(("training", "early_stopping", "mode"), f"cannot tell whether a higher {metric} is better",
                  "set mode: min (lower is better) or mode: max")
        if training["stage"] in ("sft", "pt") and metric != "eval_loss":
            error(("training", "early_stopping", "metric"),
                  f"stage {training['stage']} evaluates eval_loss only, not {metric}",
                  "use metric: eval_loss (generation metrics come after training: `runner predict`)")
    if output["keep_best"]:
        cadences = ((output["save_every"], training["eval_every"], "save_every", "eval_every"),
                    (output["saves_per_epoch"], training["evals_per_epoch"], "saves_per_epoch", "evals_per_epoch"))
        for save, evaluate, save_key, eval_key in cadences:
            if save and save != evaluate:
                error(("output", save_key), f"keep_best checkpoints at every evaluation (training.{eval_key}); "
                      f"output.{save_key} asks for another cadence",
                      f"remove output.{save_key}: the checkpoints follow the evaluations")
