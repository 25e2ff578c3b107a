"""The typed Plan: one frozen dataclass per config section. Values come from the config with the
schema's defaults filled in once (runner.config.schema.fill_defaults), plus what the resolver
derives (absolute paths, `source`, the batch arithmetic). Code reads attributes; no section
carries a default of its own, so the schema stays the one place a default is written
(tests/test_plan_typed.py holds every schema default against what these objects hold).

Free-form mappings of the config (dataset `columns`, `roles`, `substitute`) stay dicts; lists
become tuples. `to_dict` gives plan.json's layout; `build` reads it back."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Union

# Each training stage's own settings (training.dpo, training.grpo, ...): names used in Training's fields.
from runner.plan.stage_sections import CPO, DPO, GRPO, KTO, ORPO, RM, Reward, SimPO  # noqa: F401 (Reward: GRPO.rewards)


@dataclass(frozen=True)
class Model:
    path: str                      # absolute for a local model, else the hub id
    source: str                    # "local" or "hub"
    gguf_file: str | None
    random_init: bool
    revision: str | None
    dtype: str
    attn_implementation: str
    tokenizer: str | None
    trust_remote_code: bool
    rope_scaling: dict | None      # transformers' rope_parameters keys, `type` as rope_type
    max_position: int | None


@dataclass(frozen=True)
class Adapter:
    kind: str                      # lora | full | freeze ("none" is resolved to full)
    r: int
    alpha: float                   # resolved: 2 x r when the config leaves it unset
    dropout: float
    target_modules: Union[str, tuple[str, ...]]
    exclude_modules: tuple[str, ...]
    dora: bool
    rslora: bool
    init: str
    loraplus_lr_ratio: float | None
    loraplus_lr_embedding: float
    bias: str
    modules_to_save: tuple[str, ...]
    trainable_layers: int | None
    trainable_modules: tuple[str, ...]
    init_from: str | None          # an existing adapter's folder (absolute) to continue training


@dataclass(frozen=True)
class Quantization:
    bits: int | None               # None: the base is not quantized
    quant_type: str
    double_quant: bool
    compute_dtype: str
    quant_storage: str


@dataclass(frozen=True)
class Dataset:
    path: str                      # absolute for local files, else the hub id
    source: str | None             # "local" or "hub"
    format: str
    type: str
    split: str
    subset: str | None
    revision: str | None
    columns: dict
    roles: dict
    num_samples: int | None
    max_samples: int | None
    weight: float
    substitute: dict
    system: str | None
    on_bad_row: str


@dataclass(frozen=True)
class Template:
    name: str
    jinja: str | None
    system_prompt: str | None
    train_on: str
    enable_thinking: bool | None


@dataclass(frozen=True)
class Sequence:
    max_length: int
    packing: bool
    truncation: str
    allow_all_truncated: bool


@dataclass(frozen=True)
class SpecialTokens:
    pad_token: str | None
    eos_token: str | None
    bos_token: str | None
    add: tuple[str, ...]


@dataclass(frozen=True)
class TokenizerSource:
    path: str
    gguf_file: str | None
    revision: str | None
    trust_remote_code: bool


@dataclass(frozen=True)
class Vision:
    max_pixels: int
    min_pixels: int
    video_fps: float
    video_max_frames: int
    tower: str
    projector: str


@dataclass(frozen=True)
class Data:
    datasets: tuple[Dataset, ...]
    eval_datasets: tuple[Dataset, ...]
    val_size: float
    cache_dir: str
    shuffle: bool
    streaming: bool
    stream_buffer: int | None      # None only in a plan.json written before streaming existed
    num_proc: int | None           # likewise; None reads as 1
    seed: int
    stage: str
    template: Template
    sequence: Sequence
    special_tokens: SpecialTokens
    tokenizer: TokenizerSource
    prompt_budget: int | None      # derived, stage grpo: the longest prompt (max_length - max_completion_length)
    vision: Vision | None = None       # None in a plan.json written before the section existed


@dataclass(frozen=True)
class LowRank:
    rank: int
    update_proj_gap: int
    scale: float | None
    proj_type: str
    apollo_proj: str
    apollo_scale_type: str


@dataclass(frozen=True)
class Muon:
    momentum: float
    nesterov: bool
    ns_steps: int
    adjust_lr: str


@dataclass(frozen=True)
class EarlyStopping:
    metric: str                    # resolved: always with its `eval_` prefix
    patience: int
    min_delta: float
    mode: str                      # resolved: min | max (auto is decided from the metric's name)


@dataclass(frozen=True)
class Training:
    stage: str
    epochs: float
    max_steps: int | None
    micro_batch_size: int
    gradient_accumulation: int
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    warmup_steps: int | None
    optimizer: str
    optim_target_modules: tuple[str, ...] | None
    low_rank: LowRank | None       # None only in a plan.json written before these settings
    muon: Muon | None
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    max_grad_norm: float | None
    gradient_checkpointing: Union[bool, int]
    activation_offloading: bool
    precision: str
    eval_every: int | None
    evals_per_epoch: int | None
    early_stopping: EarlyStopping | None
    seed: int
    neftune_noise_alpha: float | None
    max_nonfinite: int
    dpo: DPO
    kto: KTO
    orpo: ORPO
    grpo: GRPO | None              # None only in a plan.json written before stage grpo existed
    rm: RM | None          # None only in a plan.json written before these stages existed
    simpo: SimPO | None
    cpo: CPO | None
    liger: Union[bool, str]
    chunked_loss: Union[bool, str]
    fused_lora: Union[bool, str]
    torch_compile: bool
    # derived by the resolver
    collator: str                  # packed | padded | preference | kto | prompt
    batch_per_process: int         # micro_batch_size x gradient_accumulation
    effective_batch_size: int | None   # x world size, when the config names the world


@dataclass(frozen=True)
class FSDP:
    reshard_after_forward: bool
    cpu_offload: bool
    state_dict_type: str
    activation_checkpointing: bool
    wrap_class: str | None


@dataclass(frozen=True)
class DeepSpeed:
    zero_stage: int
    offload_optimizer: str
    offload_params: str
    nvme_path: str | None
    config: str | None


@dataclass(frozen=True)
class Distributed:
    backend: str
    num_processes: int | None
    num_machines: int
    machine_rank: int | None
    main_address: str | None
    main_port: int | None
    context_parallel: int | None   # None only in a plan.json written before this setting (off)
    sequence_parallel: int | None
    fsdp: FSDP
    deepspeed: DeepSpeed
    sharded: bool                  # derived: parameters sharded (fsdp, or ZeRO-3)
    accelerate: dict               # derived: what `accelerate launch` reads (runner.plan.launch_settings)
    parallelism: dict | None       # derived: Accelerate's ParallelismConfig for a row split over processes


@dataclass(frozen=True)
class WandB:
    project: str
    entity: str | None
    name: str | None
    tags: tuple[str, ...]
    mode: str
    api_key: str | None            # "<secret>" when set: the value lives in Plan.secrets only


@dataclass(frozen=True)
class MLflow:
    tracking_uri: str | None       # None: MLFLOW_TRACKING_URI, else sqlite in the run directory
    experiment: str | None
    run_name: str | None
    tags: dict
    token: str | None              # "<secret>" when set: the value lives in Plan.secrets only


@dataclass(frozen=True)
class SwanLab:
    project: str
    workspace: str | None
    name: str | None
    tags: tuple[str, ...]
    mode: str
    api_key: str | None            # "<secret>" when set: the value lives in Plan.secrets only


@dataclass(frozen=True)
class Tracking:
    wandb: WandB | None
    tensorboard: bool
    mlflow: MLflow | None
    swanlab: SwanLab | None
    log_every: int
    progress_bar: bool


@dataclass(frozen=True)
class Output:
    dir: str                       # absolute, {name} and {plan_hash} substituted
    resume: str
    overwrite: bool
    save_every: int | None
    saves_per_epoch: int | None
    save_total_limit: int | None
    keep_best: bool
    merge: bool


@dataclass(frozen=True)
class Evaluation:
    tasks: tuple[str, ...]         # lm-eval names, and task files or folders made absolute
    num_fewshot: int | None
    limit: float | None
    chat: bool
    baseline: bool
    batch_size: int


def build(cls, value, *, earlier: bool = False):
    """`value` (plain dicts and lists, as in plan.json) as an instance of the annotated type
    `cls`. Unknown and missing keys are errors: a section and the schema must not drift apart.
    `earlier`: a plan.json written by an earlier runner, which lacks the settings added since;
    each was off there, so a missing optional field reads as None and a missing flag as False
    (any other missing field is still an error)."""
    return _build(cls, value, cls.__name__ if isinstance(cls, type) else str(cls), earlier)


def _absent(kind):
    """What a setting added after a plan.json was written meant there, or MISSING."""
    if kind is bool:
        return False
    if typing.get_origin(kind) in (Union, types.UnionType) and type(None) in typing.get_args(kind):
        return None
    return dataclasses.MISSING


def _build(kind, value, where: str, earlier: bool = False):
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping for {kind.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(kind)
        fields = dataclasses.fields(kind)
        names = {f.name for f in fields}
        required = {f.name for f in fields
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        extra, missing = set(value) - names, required - set(value)
        if earlier:
            value = {**value, **{n: _absent(hints[n]) for n in missing if _absent(hints[n]) is not dataclasses.MISSING}}
            missing = required - set(value)
        if extra or missing:
            raise TypeError(f"{where}: {kind.__name__} has no field(s) {sorted(extra)}" if extra
                            else f"{where}: {kind.__name__} misses field(s) {sorted(missing)}")
        return kind(**{n: _build(hints[n], v, f"{where}.{n}", earlier) for n, v in value.items()})
    if origin in (Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _build(option, value, where, earlier)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"{where}: {value!r} fits none of {kind}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {type(value).__name__}")
        item = typing.get_args(kind)[0]
        return tuple(_build(item, v, f"{where}.{i}", earlier) for i, v in enumerate(value))
    if kind is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)  # JSON Schema's integers include 3e9 written as a float
    if kind in (str, int, bool, float):
        if type(value) is not kind:
            raise TypeError(f"{where}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"{where}: unsupported annotation {kind}")


def to_dict(value):
    """plan.json's form of a section: dataclasses as dicts, tuples as lists."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_dict(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_dict(v) for v in value]
    if isinstance(value, dict):
        return {k: to_dict(v) for k, v in value.items()}
    return value
