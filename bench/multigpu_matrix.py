"""bench/multigpu.py's matrix: each run's overrides of bench/scenarios/lora8b_packed.yaml, the GPU
counts it runs at, its step counts and the checks made on it. Plain data and pure functions."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

FULL = ["adapter.kind=full", "training.learning_rate=1e-5", "training.optimizer=adamw_torch_fused",
        "training.gradient_checkpointing=true"]  # 4 x 2048 tokens of 8B activations (~70 GiB) need recomputation
# Rows split over the processes (context parallelism): causal, unpacked rows cut from one long document,
# sdpa, LoRA, recomputation through FSDP; one row a step.
CP = ["distributed.backend=fsdp", "model.attn_implementation=sdpa", "sequence.packing=false",
      "sequence.truncation=split", "training.micro_batch_size=1", "training.learning_rate=2e-4",
      "training.gradient_checkpointing=false", "distributed.fsdp.activation_checkpointing=true",
      "model.max_position=131072"]
CP_LONG, CP_SHORT = 131072, 4096


@dataclass(frozen=True)
class Run:
    overrides: tuple[str, ...]
    worlds: tuple[str, ...]          # GPU counts: numbers, or "N" (all GPUs of the host)
    wrapper: str                     # what the model must be wrapped in above one process
    same_global_batch: bool = False  # gradient accumulation N/K at K GPUs: per-step losses comparable
    split_rows: bool = False         # distributed.context_parallel = K at K GPUs
    max_length: int | None = None
    long_rows: bool = False          # trains on bench-made long documents, not wiki_demo's
    model: str = "llama3_8b"
    steps: tuple[int, int] | None = None   # (warm-up, timed) optimizer steps, else the command line's
    needs: tuple[str, ...] = ()      # Python modules it needs (absent: skipped in --smoke)
    gpu_only: bool = False           # cannot run on CPU processes (skipped in --smoke)
    extra: tuple[str, ...] = field(default=())


RUNS = {
    # lr 2e-4: the loss falls steadily (12.6 -> 9 in 25 steps), so per-step losses that follow the
    # 1-GPU curve say the gradients were averaged right. (At 1e-3 it spiked at step 4 and from there two
    # launches of one config parted by 2%: chaos, not a check.)
    "lora_ddp": Run(("distributed.backend=auto", "training.learning_rate=2e-4"), ("1", "2", "4", "8", "N"),
                    "DistributedDataParallel", same_global_batch=True),
    # At 1 GPU a full 8B does not fit an 80 GB card (weights, gradients and Adam states ~64 GB before
    # activations): there the efficiency is against the smallest GPU count that ran.
    "full_fsdp2": Run(tuple(FULL + ["distributed.backend=fsdp", "distributed.fsdp.reshard_after_forward=true"]),
                      ("1", "2", "4", "8", "N"), "FSDP2", same_global_batch=True),
    "full_zero3": Run(tuple(FULL + ["distributed.backend=deepspeed", "distributed.deepspeed.zero_stage=3"]),
                      ("1", "2", "4", "8", "N"), "DeepSpeedEngine", same_global_batch=True, needs=("deepspeed",)),
    # One 128k-token row a step over all GPUs (LoRA 8B).
    "cp_128k": Run(tuple(CP), ("N",), "FSDP2", split_rows=True, max_length=CP_LONG, long_rows=True,
                   steps=(2, 5), gpu_only=True),
    # The same on rows both fit: split over all GPUs, and whole on one (multigpu_report.parity compares their losses).
    "cp_short": Run(tuple(CP), ("N",), "FSDP2", split_rows=True, max_length=CP_SHORT, long_rows=True,
                    steps=(2, 10), gpu_only=True),
    "cp_short_ref": Run(tuple(CP), ("1",), "FSDP2", max_length=CP_SHORT, long_rows=True, steps=(2, 10)),
    # Llama-3-70B shape, weights written to disk by bench/random_checkpoint.py, 4-bit base in bf16
    # storage sharded by FSDP2, LoRA r16 all-linear.
    "qlora70b": Run(("model.random_init=false", "quantization.bits=4", "quantization.quant_storage=bfloat16",
                     "quantization.compute_dtype=bfloat16", "distributed.backend=fsdp",
                     "distributed.fsdp.activation_checkpointing=true", "training.gradient_checkpointing=false",
                     "training.micro_batch_size=1", "training.learning_rate=2e-4"),
                    ("2", "4", "8", "N"), "FSDP2", model="llama3_70b", steps=(3, 10), needs=("bitsandbytes",),
                    gpu_only=True),
    # Full 8B on fewer GPUs than it needs without offload: optimizer states and parameters in CPU memory.
    "zero3_offload": Run(tuple(FULL + ["distributed.backend=deepspeed", "distributed.deepspeed.zero_stage=3",
                                       "distributed.deepspeed.offload_optimizer=cpu",
                                       "distributed.deepspeed.offload_params=cpu"]),
                         ("1", "2"), "DeepSpeedEngine", steps=(2, 5), needs=("deepspeed",)),
}
CROSS_CHECK = ("lora_ddp", 2)  # the run the accelerate-launch run must reproduce
PARITY = {"cp_short": "cp_short_ref"}  # a split run and the unsplit run it must follow


def worlds(name: str, gpus: int) -> list[int]:
    out = [gpus if w == "N" else int(w) for w in RUNS[name].worlds]
    return [w for w in dict.fromkeys(out) if w <= gpus]


def plan_runs(gpus: int, only: list[str], cpu: bool = False) -> list[tuple[str, int]]:
    """(run, GPU count) pairs: all of them, or those `only` names (NAME or NAME@K)."""
    chosen = [(name, w) for name in RUNS for w in worlds(name, gpus)
              if not only or name in only or f"{name}@{w}" in only]
    if not only or "accelerate" in only:
        # On CPU `accelerate launch --num_processes 2` starts one process: compare at one there.
        chosen.append(("accelerate", CROSS_CHECK[1] if gpus >= CROSS_CHECK[1] and not cpu else 1))
    return chosen


def accumulation(name: str, world: int, gpus: int) -> int:
    """One global batch at every size for the runs whose per-step losses are compared."""
    run = RUNS["lora_ddp" if name == "accelerate" else name]
    return max(1, gpus // world) if run.same_global_batch else 1


def steps(name: str, ctx: dict) -> tuple[int, int]:
    run = RUNS.get(name)
    if ctx["smoke"] or run is None or run.steps is None:
        return ctx["warmup"], ctx["steps"]
    return run.steps


def overrides(name: str, world: int, ctx: dict) -> list[str]:
    """The `runner launch` overrides of one run (model, data and output folders from ctx)."""
    run = RUNS["lora_ddp" if name == "accelerate" else name]
    warmup, timed = steps(name, ctx)
    model_dir = ctx["model_dirs"][run.model]
    data = ctx["long_text"] if run.long_rows else ctx["data_dir"] / "wiki_demo.txt"
    out = [f"model.path={model_dir}", f"datasets.0.path={data}",
           f"data.cache_dir={ctx['work'] / 'cache'}", f"output.dir={ctx['work'] / 'runs' / f'{name}-{world}'}",
           "output.overwrite=true", "output.resume=never", "output.save_every=null",
           f"training.max_steps={warmup + timed}", "tracking.log_every=1", "tracking.progress_bar=false",
           "tracking.wandb=null", *run.overrides]
    if run.max_length:
        out.append(f"sequence.max_length={run.max_length}")
    if run.split_rows:
        out.append(f"distributed.context_parallel={world}")
    if ctx["smoke"]:
        import catalog

        out += catalog.smoke_runner_overrides(ctx["cpu"])
    out.append(f"training.gradient_accumulation={accumulation(name, world, ctx['gpus'])}")
    return out


def long_text(path: Path, data_dir: Path, tokens: int) -> Path:
    """One document of about `tokens` tokens or more (wiki_demo's lines joined, repeated), on one line:
    split into rows of max_length, every row but the last is full and causal."""
    if path.is_file():
        return path
    lines = [line.strip() for line in (Path(data_dir) / "wiki_demo.txt").read_text().splitlines() if line.strip()]
    text = " ".join(lines)
    chars = 5 * tokens  # the bench tokenizer: ~4 characters a token on this text
    repeated = (text + " ") * (chars // len(text) + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(repeated[:chars] + "\n")
    tmp.rename(path)
    return path


def long_tokens(ctx: dict) -> int:
    """Tokens the long-row runs need: their rows and one more."""
    need = 0
    for name, run in RUNS.items():
        if run.long_rows:
            warmup, timed = steps(name, ctx)
            need = max(need, (warmup + timed + 1) * (128 if ctx["smoke"] else run.max_length))
    return need
