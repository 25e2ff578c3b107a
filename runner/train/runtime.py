"""decide_runtime: Plan + this machine + the model's facts -> the Runtime, every launch-time decision
computed once, here (world size, backend and wrap class, dtype and precision, attention and why,
the fast path's switches, checkpointed layers, the modules LoRA adapts, total steps). Execution
carries the Runtime out and decides nothing more.

The inputs are plain values: `environment()` reads the machine, `model_facts()` reads the model's
architecture from its config (built on the meta device: no weights are read), so the decisions and
every refusal among them come before a model loads, and tests give decide_runtime made-up
situations (tests/test_runtime.py)."""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass

from runner.data.vlm import varlen_refusal
from runner.errors import UserError
from runner.plan.parallelism import sizes, split_size
from runner.plan.plan import FastPath, Plan, Runtime
from runner.train.precision import check_fp8
from runner.train.schedule import cadences, steps_per_epoch, total_steps  # noqa: F401 (total_steps: tests, resolve)
from runner.train import stages

# training.precision fp8 with LoRA: the frozen base's input gradient (fast_path.fp8_backward). "fp8"
# runs its backward matmul on the FP8 tensor cores too, for a second FP8 copy of each weight (1 byte
# per parameter); "bf16" keeps it exact to the bf16 weight. Measured on an H100 (bench/fp8_check.py
# part c, LoRA 8B, rows of 2048): FP8 backward 13,584 tokens/s, bf16 backward 11,976, all-bf16 11,968;
# FP8 backward on the MLP's projections only 13,325.
FP8_BACKWARD = "fp8"
LIGER_FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3")
# Model types whose forward hands the LM head's output to the loss unchanged: the chunked loss may
# run the head itself. TRANSFORMED_LOGITS change the logits first, in a way
# runner.train.fast.chunked_loss.logits_transform reproduces. Any other type keeps its own loss.
PLAIN_LOGITS = ("llama", "mistral", "mixtral", "ministral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi",
                "phi3", "gemma", "olmo", "olmo2", "starcoder2", "smollm3", "stablelm", "gpt_neox", "deepseek_v3",
                "glm4", "arcee",
                # vision-language models whose forward hands its LM head's output to the loss as is
                # (Gemma 3's does too: it is listed below for its text-only checkpoints)
                "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "llava_next", "idefics3", "smolvlm")
TRANSFORMED_LOGITS = ("gemma2", "gemma3", "gemma3_text", "cohere", "cohere2", "granite", "granitemoe",
                      "granitemoeshared")


@dataclass(frozen=True)
class Environment:
    world_size: int
    rank: int
    device: str                   # cuda | xpu | mps | cpu
    bf16_supported: bool          # bf16 is a good idea here (CPUs run it, slowly: False)
    visible_gpus: int
    varlen_missing: str | None    # why this torch cannot run varlen attention
    flash_attn_installed: bool
    liger_available: bool
    cuda_alloc_conf: str | None
    compute_capability: tuple[int, int] | None = None   # the first CUDA GPU's (major, minor)
    torchao_available: bool = False


@dataclass(frozen=True)
class ModelFacts:
    model_type: str
    class_name: str
    uses_attention_interface: bool    # transformers' attention functions (what varlen registers with)
    varlen_unsupported: str | None    # why varlen cannot run this architecture
    decoder_layer_class: str | None   # what FSDP wraps
    checkpointable_layers: int        # decoder layers that can recompute their activations
    linear_names: tuple[str, ...]     # short names of the linear layers, output head excluded
    layer_stack: str | None           # the ModuleList of decoder blocks ("model.layers")
    num_layers: int
    parameter_names: tuple[str, ...]
    num_attention_heads: int | None = None   # what Ulysses sequence parallelism spreads over processes


def environment() -> Environment:
    import torch

    from runner.train.fast import varlen

    if torch.cuda.is_available():
        device, bf16 = "cuda", torch.cuda.is_bf16_supported()
    elif hasattr(torch, "xpu") and torch.xpu.is_available():
        device, bf16 = "xpu", True
    elif torch.backends.mps.is_available():
        device, bf16 = "mps", False
    else:
        device, bf16 = "cpu", False
    return Environment(
        world_size=int(os.environ.get("WORLD_SIZE", "1")), rank=int(os.environ.get("RANK", "0")), device=device,
        bf16_supported=bf16, visible_gpus=torch.cuda.device_count() if device == "cuda" else 0,
        varlen_missing=varlen.missing(), flash_attn_installed=importlib.util.find_spec("flash_attn") is not None,
        liger_available=importlib.util.find_spec("liger_kernel") is not None,
        cuda_alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        compute_capability=tuple(torch.cuda.get_device_capability(0)) if device == "cuda" else None,
        torchao_available=importlib.util.find_spec("torchao") is not None)


def model_facts(plan: Plan) -> ModelFacts:
    """The architecture's facts, from the model's config and a weightless (meta device) instance."""
    import torch

    from runner.train.model import check_rope, load_config
    from runner.train.vision import auto_class

    config = load_config(plan)
    with torch.device("meta"):
        model = auto_class(config).from_config(config, trust_remote_code=plan.model.trust_remote_code)
    check_rope(plan, model)
    return facts_of(model)


def facts_of(model) -> ModelFacts:
    """The facts of a model instance (on the meta device or loaded)."""
    import torch

    from runner.train.fast import varlen

    config = model.config
    head = model.get_output_embeddings()
    linear = {name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    stack, layers = _layer_stack(model)
    return ModelFacts(
        model_type=getattr(config, "model_type", "") or "", class_name=type(model).__name__,
        uses_attention_interface=bool(getattr(model, "_supports_attention_backend", False)),
        varlen_unsupported=varlen.unsupported(config), decoder_layer_class=decoder_layer_class(model),
        checkpointable_layers=checkpointable_count(model), linear_names=tuple(sorted(linear)),
        layer_stack=stack, num_layers=layers, parameter_names=tuple(n for n, _ in model.named_parameters()),
        num_attention_heads=getattr(config.get_text_config(), "num_attention_heads", None))


def _layer_stack(model) -> tuple[str | None, int]:
    """(name, length) of the longest ModuleList named layers / h / blocks: the transformer blocks."""
    import torch

    best = (None, 0)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > best[1] \
                and re.search(r"(^|\.)(layers|h|blocks)$", name):
            best = (name, len(module))
    return best


def decoder_layer_class(model) -> str | None:
    """The class FSDP wraps: a declared no-split module class the model really contains, else the
    class repeated in the longest ModuleList (the decoder stack)."""
    present = {type(m).__name__ for m in model.modules()}
    for name in sorted(getattr(model, "_no_split_modules", None) or []):
        if name in present:
            return name
    best = None
    for module in model.modules():
        kids = list(module.children()) if type(module).__name__ == "ModuleList" else []
        if kids and len({type(k) for k in kids}) == 1 and (best is None or len(kids) > len(best)):
            best = kids
    return type(best[0]).__name__ if best else None


def checkpointable_count(model) -> int:
    from runner.train.fast.checkpointing import checkpointable

    return len(checkpointable(model))


def decide_runtime(plan: Plan, env: Environment, facts: ModelFacts, train_rows: int) -> tuple[Runtime, list[str]]:
    """The Runtime of this launch, and warnings to print once. Raises UserError for what cannot run."""
    warnings: list[str] = []
    backend = concrete_backend(plan.distributed.backend, env.world_size)
    wrap = None
    if backend == "fsdp":
        wrap = plan.distributed.fsdp.wrap_class or facts.decoder_layer_class
        if wrap is None:
            raise UserError(f"FSDP needs the decoder layer class of {facts.class_name}, and runner cannot find it",
                            where="distributed.fsdp.wrap_class", hint="name it, e.g. wrap_class: LlamaDecoderLayer")
    dtype = plan.model.dtype
    if dtype == "auto":
        dtype = "bfloat16" if env.bf16_supported else "float32"
    precision = plan.training.precision
    if precision == "auto":
        precision = "bf16" if dtype == "bfloat16" or env.bf16_supported else ("fp16" if dtype == "float16" else "fp32")
    if precision == "fp8":
        check_fp8(plan, env, dtype)
    data_parallel = split_rows(plan, env, facts)
    attention, why = decide_attention(plan, env, facts)
    trained = target_modules(plan, facts)
    projected = optimizer_modules(plan, facts, env.world_size)
    fast = decide_fast_path(plan, env, facts, backend)
    if precision == "fp8" and plan.adapter.kind != "lora" and not plan.training.torch_compile:
        warnings.append("training.precision fp8 without training.torch_compile: torchao's float8 casts run as "
                        "separate kernels and the full fine-tune is usually slower than bf16")
    if plan.training.gradient_checkpointing not in (False, True) and fast.checkpointed_layers is None:
        warnings.append(f"training.gradient_checkpointing: {plan.training.gradient_checkpointing} selects layers, "
                        f"but {facts.class_name} has no per-layer checkpointing: every layer is checkpointed")
    if env.world_size == 1 and env.visible_gpus > 1:
        warnings.append(f"note: {env.visible_gpus} GPUs are visible to this one process; it trains on one "
                        "(`runner launch` starts one process per GPU)")
    runtime = Runtime(
        world_size=env.world_size, backend=backend, fsdp_wrap_class=wrap, device=env.device, dtype=dtype,
        precision=precision, attn_implementation=attention, attn_implementation_auto=why, fast_path=fast,
        target_modules=trained[0], trained_layers=trained[1],
        effective_batch_size=plan.training.batch_per_process * data_parallel,
        total_steps=total_steps(plan, train_rows, data_parallel), cuda_alloc_conf=env.cuda_alloc_conf,
        optimizer_modules=projected,
        **cadences(plan, steps_per_epoch(plan, train_rows, data_parallel), warnings))
    return runtime, warnings


def split_rows(plan: Plan, env: Environment, facts: ModelFacts) -> int:
    """The data-parallel size: processes / the context or sequence parallel size (the processes of
    one split read one batch together). Refuses a split this launch cannot make."""
    cp, sp = sizes(plan.distributed)
    size, key = (cp, "context_parallel") if cp > 1 else (sp, "sequence_parallel")
    if size == 1:
        return env.world_size
    if env.world_size % size:
        raise UserError(f"{size} does not divide the {env.world_size} processes of this launch",
                        where=f"distributed.{key}", hint=f"launch a multiple of {size} processes, or lower {key}")
    if sp > 1 and facts.num_attention_heads and facts.num_attention_heads % sp:
        raise UserError(f"{sp} does not divide the {facts.num_attention_heads} attention "
                        f"heads of {facts.class_name} (Ulysses gives each process a slice of the heads)",
                        where="distributed.sequence_parallel",
                        hint="use a divisor of the head count, or context_parallel with backend fsdp")
    return env.world_size // size


def concrete_backend(backend: str, world_size: int) -> str:
    """`distributed.backend: auto`: DDP across several processes, one process otherwise."""
    if backend == "auto":
        return "ddp" if world_size > 1 else "single"
    return backend


def decide_attention(plan: Plan, env: Environment, facts: ModelFacts) -> tuple[str, str | None]:
    """(attention to train with, why auto did not pick varlen). varlen won wherever rows hold many
    samples or padding; sdpa is the fallback wherever varlen cannot run (docs/performance.md)."""
    requested = plan.model.attn_implementation
    where = "model.attn_implementation"
    if requested == "flash_attention_2":
        if not env.flash_attn_installed:
            raise UserError("model.attn_implementation is flash_attention_2 but the flash-attn package is not "
                            "installed", where=where,
                            hint="install it (`pip install 'runner[flash]'`, needs a CUDA toolchain) or use `sdpa`")
        if env.device != "cuda":
            raise UserError("flash_attention_2 needs a CUDA GPU", where=where, hint="use `sdpa` on this machine")
    if requested == "varlen":
        if env.varlen_missing:
            raise UserError(f"model.attn_implementation is varlen, but {env.varlen_missing}", where=where,
                            hint="upgrade torch or use `sdpa`")
        unsupported = facts.varlen_unsupported or varlen_refusal(facts.model_type, plan.data.sequence.packing)
        if unsupported:
            raise UserError(f"model.attn_implementation is varlen, but {facts.model_type!r} cannot use it: "
                            f"{unsupported}", where=where, hint="use `sdpa` (or `flex_attention`) for this model")
    if requested != "auto":
        return requested, None
    if split_size(plan.distributed) > 1:
        return "sdpa", "rows are split over processes (context / sequence parallelism run sdpa)"
    if env.device != "cuda":
        return "sdpa", f"the device is {env.device} (varlen's kernel is CUDA-only)"
    if env.varlen_missing:
        return "sdpa", env.varlen_missing
    if not facts.uses_attention_interface:
        return "sdpa", f"{facts.class_name} does not use transformers' attention interface"
    unsupported = facts.varlen_unsupported or varlen_refusal(facts.model_type, plan.data.sequence.packing)
    if unsupported:
        return "sdpa", unsupported
    return "varlen", None


def decide_fast_path(plan: Plan, env: Environment, facts: ModelFacts, backend: str) -> FastPath:
    training, model_type = plan.training, facts.model_type
    sharded = plan.distributed.sharded
    # A stage that scores sequences (rm) has no LM head for Liger's fused loss or the chunked loss.
    lm_head = stages.get(training.stage).lm_head
    liger_fits = env.device == "cuda" and env.liger_available and model_type in LIGER_FAMILIES and lm_head
    if training.liger is True and not (env.liger_available and model_type in LIGER_FAMILIES):
        raise UserError(f"training.liger is true but Liger kernels are not available for {model_type!r} here",
                        where="training.liger", hint="pip install 'runner[liger]' on the GPU machine, or use auto")
    liger = training.liger is True or (training.liger == "auto" and liger_fits)
    known = (model_type in PLAIN_LOGITS or model_type in TRANSFORMED_LOGITS) and lm_head
    if training.chunked_loss is True and not lm_head:
        raise UserError(f"training.chunked_loss is true, but stage {training.stage} scores sequences and has no LM "
                        "head loss to chunk", where="training.chunked_loss", hint="use auto or false")
    if training.chunked_loss is True and not known:
        raise UserError(f"training.chunked_loss is true, but runner does not know how a {model_type!r} model turns "
                        "its hidden states into logits (a forward may scale or cap them)",
                        where="training.chunked_loss", hint="use auto (the model's own loss for this type) or false")
    # Liger's fused linear cross-entropy already avoids the logits: it wins over the chunked loss.
    chunked = not liger and (training.chunked_loss is True or (training.chunked_loss == "auto" and known))
    off = None
    if training.chunked_loss == "auto" and not liger and not known:
        off = (f"model type {model_type!r} is not known to hand its logits to the loss unchanged" if lm_head
               else f"stage {training.stage} has no LM head loss")
    if chunked and sharded:
        # The chunked loss runs the LM head outside the root module's forward: FSDP2 has resharded it
        # by then and ZeRO-3 would recompute against partitioned weights.
        chunked, off = False, "sharded parameters (fsdp / ZeRO-3)"
    elif chunked and split_size(plan.distributed) > 1:
        # Each process holds a piece of the row: the labels come shifted by the Trainer
        # (shift_labels), which the model's own loss takes and the chunked loss does not.
        chunked, off = False, "rows split over processes (context / sequence parallelism)"
    elif chunked and env.world_size > 1 and model_type in TRANSFORMED_LOGITS:
        # Such models take the chunked loss by calling their decoder directly, past DDP's wrapper.
        chunked, off = False, f"several processes (DDP) with {model_type!r}, whose forward transforms its logits"
    fused = plan.adapter.kind == "lora" and (training.fused_lora is True or (
        training.fused_lora == "auto" and env.device == "cuda" and not plan.quantization.bits and not sharded))
    fp8 = fp8_backward = None
    if training.precision == "fp8":
        from runner.data.vlm import FAMILIES as VISION_FAMILIES

        if model_type in VISION_FAMILIES:
            raise UserError(f"training.precision fp8 is measured on text decoders only, not {model_type!r}",
                            where="training.precision", hint="use precision bf16 for vision-language models")
        # checks_fp8 refused LoRA with fused_lora false: FP8 LoRA is the fused function's FP8 form.
        fp8, fused = ("lora-base", True) if plan.adapter.kind == "lora" else ("torchao", fused)
        fp8_backward = FP8_BACKWARD if fp8 == "lora-base" else None
    return FastPath(liger=liger, chunked_loss=chunked, chunked_loss_off_because=off, fused_lora=fused,
                    torch_compile=training.torch_compile, non_blocking_copies=env.device == "cuda",
                    checkpointed_layers=checkpointed_layers(training.gradient_checkpointing,
                                                            facts.checkpointable_layers), fp8=fp8, fp8_backward=fp8_backward,
                    compiled_layers=compiled_layers(plan, facts, backend))


def compiled_layers(plan: Plan, facts: ModelFacts, backend: str) -> str | None:
    """training.torch_compile compiles each decoder layer on its own (runner.train.fast.compile)."""
    if not plan.training.torch_compile:
        return None
    where = "training.torch_compile"
    if backend in ("fsdp", "deepspeed"):
        raise UserError(f"training.torch_compile with distributed.backend {backend} is not supported: runner compiles "
                        "each decoder layer, and the sharding hooks on those layers are not measured compiled",
                        where=where, hint="turn torch_compile off, or train with ddp / one process")
    if not facts.checkpointable_layers:
        raise UserError(f"training.torch_compile: runner compiles each decoder layer, and {facts.class_name} has none "
                        "that it can find (transformers' GradientCheckpointingLayer)", where=where,
                        hint="turn torch_compile off for this model")
    return f"{facts.checkpointable_layers}/{facts.checkpointable_layers}"


def checkpointed_layers(setting, layers: int) -> str | None:
    """"N/M": how many of the model's M decoder layers `training.gradient_checkpointing` recomputes
    (true = all, an integer = the first N); None when it is off or the model has no such layers."""
    if not setting or not layers:
        return None
    return f"{layers if setting is True else min(int(setting), layers)}/{layers}"


def optimizer_modules(plan: Plan, facts: ModelFacts, world_size: int) -> tuple[str, ...]:
    """galore_* / apollo_*: the linear modules whose gradients are projected (named, or every linear
    layer but the output head); muon: the decoder stack, whose 2-D weights Muon updates."""
    from runner.config.optimizer_checks import layerwise, low_rank

    name = plan.training.optimizer
    if layerwise(name) and world_size > 1:
        raise UserError(f"{name} cannot run on {world_size} processes: it updates each parameter during backward, "
                        "before DDP averages the gradients", where="training.optimizer",
                        hint=f"train on one process, or use {name.removesuffix('_layerwise')}")
    if low_rank(name):
        wanted = plan.training.optim_target_modules or facts.linear_names
        for pattern in wanted:
            if not any(n == pattern or re.fullmatch(pattern, n) for n in facts.linear_names):
                raise UserError(f"training.optim_target_modules: {pattern!r} names no linear module of "
                                f"{facts.class_name}", where="training.optim_target_modules",
                                hint=f"its linear modules: {', '.join(facts.linear_names)}")
        return tuple(wanted)
    if name == "muon":
        if facts.layer_stack is None:
            raise UserError(f"cannot find the decoder layers of {facts.class_name} for Muon", where="training.optimizer",
                            hint="use adamw_torch_fused")
        return (facts.layer_stack,)
    return ()


def target_modules(plan: Plan, facts: ModelFacts) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(what trains, for plan.json: LoRA's module names with `all-linear` made concrete, or freeze's
    trained blocks and patterns; freeze's trained blocks alone)."""
    adapter = plan.adapter
    if adapter.kind == "lora":
        wanted = facts.linear_names if adapter.target_modules == "all-linear" else adapter.target_modules
        excluded = set(adapter.exclude_modules)
        names = tuple(n for n in wanted if n not in excluded)  # PEFT applies regex excludes itself
        if not names:
            raise UserError("no module left to adapt", where="adapter.target_modules", hint="check exclude_modules")
        return names, ()
    if adapter.kind != "freeze":
        return (), ()
    layers: tuple[str, ...] = ()
    if adapter.trainable_layers:
        if facts.layer_stack is None:
            raise UserError("cannot find the decoder layers of this model", where="adapter.trainable_layers",
                            hint="name the modules to train with adapter.trainable_modules instead")
        first = max(facts.num_layers - adapter.trainable_layers, 0)
        layers = tuple(f"{facts.layer_stack}.{i}" for i in range(first, facts.num_layers))
    for pattern in adapter.trainable_modules:
        if not any(re.search(pattern, n) for n in facts.parameter_names):
            raise UserError(f"adapter.trainable_modules pattern {pattern!r} matches no parameter",
                            where="adapter.trainable_modules",
                            hint=f"parameter names look like {facts.parameter_names[0]!r}")
    return layers + adapter.trainable_modules, layers
