"""The Plan (what the config decides, resolved) and what a launch adds to it: the Runtime (the
decisions that need the hardware and the model's code, runner.train.runtime) and the Launch
record (what this launch measured). plan.json holds all three.

The plan hash covers the config, the data, the model files, the library versions and, once
launched, the Runtime's reproducible part; never a path, a cache hit, a tracker's run id or a time,
so one run has one plan hash on its first launch, on its resume and on another machine."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field

from runner.plan import hashing
from runner.plan.sections import (Adapter, Data, Distributed, Evaluation, Model, Output, Quantization, Tracking,
                                  Training, build, to_dict)


@dataclass(frozen=True)
class Hashes:
    config: str
    data: str | None
    model: str | None
    tokenizer: str | None
    plan_static: str | None        # config + data + model + library versions
    plan: str | None               # plan_static + the Runtime's reproducible part, once launched
    unresolved: tuple[str, ...]


@dataclass(frozen=True)
class FastPath:
    liger: bool
    chunked_loss: bool
    chunked_loss_off_because: str | None
    fused_lora: bool
    torch_compile: bool
    non_blocking_copies: bool
    checkpointed_layers: str | None    # "N/M" of the decoder layers recomputed, None when off
    # training.precision fp8: "lora-base" (runner's FP8 frozen-base LoRA) or "torchao" (float8 training)
    fp8: str | None = None
    # fp8 "lora-base": the frozen base's input gradient, "fp8" (FP8 tensor cores) or "bf16" (exact)
    fp8_backward: str | None = None
    # training.torch_compile: "N/N", every decoder layer compiled on its own (fast/compile.py)
    compiled_layers: str | None = None


@dataclass(frozen=True)
class Runtime:
    world_size: int
    backend: str                       # single | ddp | fsdp | deepspeed
    fsdp_wrap_class: str | None
    device: str                        # cuda | cpu | xpu | mps
    dtype: str
    precision: str                     # bf16 | fp16 | fp32 | fp8
    attn_implementation: str
    attn_implementation_auto: str | None   # why auto did not pick varlen
    fast_path: FastPath
    target_modules: tuple[str, ...]    # LoRA: the adapted modules; freeze: the trained blocks and patterns
    trained_layers: tuple[str, ...]    # freeze: the decoder blocks it trains
    effective_batch_size: int
    total_steps: int                   # optimizer steps, as the Trainer counts them
    steps_per_epoch: int | None        # optimizer steps per pass over the data (None: an earlier plan.json)
    eval_steps: int | None             # evaluate every N steps (eval_every, or evals_per_epoch made steps)
    save_steps: int | None             # checkpoint every N steps (save_every, saves_per_epoch; keep_best: eval_steps)
    cuda_alloc_conf: str | None        # allocator settings: speed and memory, never the numbers
    # galore_* / apollo_*: the projected linear modules; muon: the decoder stack whose 2-D weights it updates
    optimizer_modules: tuple[str, ...] = ()

    def reproducible(self) -> dict:
        """The part that joins the plan hash: every decision that can change the trained weights."""
        out = to_dict(self)
        del out["cuda_alloc_conf"]
        if not out["optimizer_modules"]:  # the plain optimizers: hashes as before the field existed
            del out["optimizer_modules"]
        for key in ("fp8", "fp8_backward", "compiled_layers"):  # likewise where they are off
            if out["fast_path"][key] is None:
                del out["fast_path"][key]
        return out


@dataclass(frozen=True)
class Launch:
    """What this launch found and measured: in plan.json, never in a hash."""
    trainable_params: int
    total_params: int
    fused_lora_layers: int             # LoRA layers on runner's fused path (fast_path.fused_lora)
    train_rows: int
    eval_rows: int
    data_stats: dict
    versions: dict
    wandb_run_id: str | None
    outcome: dict | None = None        # how training ended: early stopping's step, keep_best's checkpoint
    tracker_runs: dict | None = None   # the other trackers' run ids ({"mlflow": ..., "swanlab": ...}), resumed into


@dataclass(frozen=True)
class Plan:
    name: str
    config_dir: str
    config: dict                       # the config with defaults, secrets redacted (for people and diffs)
    model: Model
    adapter: Adapter
    quantization: Quantization
    data: Data
    training: Training
    distributed: Distributed
    tracking: Tracking
    output: Output
    hashes: Hashes
    deferred: tuple[str, ...]          # decisions left to launch
    warnings: tuple[str, ...] = ()
    evaluation: Evaluation | None = None   # None in a plan.json written before the section existed
    runtime: Runtime | None = None
    launch: Launch | None = None
    secrets: dict = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {f.name: copy.deepcopy(to_dict(getattr(self, f.name))) for f in dataclasses.fields(self)
                if f.name != "secrets"}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict, *, earlier: bool = False) -> "Plan":
        """A Plan read back from plan.json (secrets are never stored); `earlier`: written by an
        earlier runner, settings added since read as off (sections.build)."""
        return build(cls, {k: v for k, v in d.items() if k != "secrets"}, earlier=earlier)

    def secret(self, key: str) -> str | None:
        """A secret key's value ("model.token"): given to the library that needs it, never written."""
        return self.secrets.get(key)

    def with_runtime(self, runtime: Runtime) -> "Plan":
        """The launch's decisions join the plan hash."""
        plan = self.hashes.plan
        if self.hashes.plan_static:
            plan = hashing.digest_text({"static": self.hashes.plan_static, "runtime": runtime.reproducible()})
        return dataclasses.replace(self, runtime=runtime, hashes=dataclasses.replace(self.hashes, plan=plan))

    def with_launch(self, launch: Launch) -> "Plan":
        return dataclasses.replace(self, launch=launch)
