"""Rows split along the sequence over several processes: context parallelism (`distributed.context_parallel`,
torch's ring attention under FSDP2) and DeepSpeed Ulysses sequence parallelism
(`distributed.sequence_parallel`, ALST). Both reach the Trainer as Accelerate's ParallelismConfig; this
module computes its values and refuses what either cannot train. Pure: no accelerate, no torch.

What the refusals protect (Accelerate 1.15, transformers 5.17):
- CP replaces the attention mask by `is_causal` inside SDPA and shards input ids, labels and
  position ids along the sequence in 2 x N chunks (load balancing): only sdpa, only causal rows
  (packed rows would attend across their samples), a row length divisible by 2 x N, and FSDP2
  (ParallelismConfig accepts CP only there). The sequence is cut inside the model's forward, so the
  stages whose loss needs whole sequences (preference pairs, reward scores) cannot use it.
- Ulysses SP hands each process all positions of a slice of the attention heads: the heads must
  divide by N (checked at launch, from the model's config), the row length must divide by N, attention
  is sdpa or flash_attention_2 (eager, flex and runner's varlen are refused by DeepSpeed), and sdpa
  treats a packed row as one sample, so packing needs flash_attention_2. DeepSpeed only.
The processes of one split share one batch: the data-parallel size is processes / N."""

from __future__ import annotations

SPLIT_STAGES = ("sft", "pt")


def sizes(dist) -> tuple[int, int]:
    """(context_parallel, sequence_parallel) of a distributed section (the config's dict or the Plan's);
    a plan.json written before these settings holds None: no split."""
    if isinstance(dist, dict):
        cp, sp = dist["context_parallel"], dist["sequence_parallel"]
    else:
        cp, sp = dist.context_parallel, dist.sequence_parallel
    return cp or 1, sp or 1


def split_size(dist) -> int:
    """How many processes share one row (1: none)."""
    return max(sizes(dist))


def data_parallel_size(world: int, dist) -> int:
    """Processes that read different batches."""
    return max(world // split_size(dist), 1)


def row_multiple(dist) -> int | None:
    """What a batch's row length must be a multiple of (the collator pads to it); None: anything."""
    cp, sp = sizes(dist)
    if cp > 1:
        return 2 * cp
    if sp > 1:
        return sp
    return None


def parallelism_settings(dist, world: int | None, attention: str | None = None) -> dict | None:
    """Keyword arguments of accelerate's ParallelismConfig (the handler's as `cp_handler` /
    `sp_handler` dicts); "deferred" where the world size is not known yet; None when no row is split."""
    cp, sp = sizes(dist)
    if cp == 1 and sp == 1:
        return None
    size = cp if cp > 1 else sp
    shard = world // size if world else "deferred"
    if cp > 1:
        return {"dp_replicate_size": 1, "dp_shard_size": shard, "cp_size": cp, "cp_backend": "torch",
                "cp_handler": {"cp_comm_strategy": "allgather"}}
    return {"dp_replicate_size": 1, "dp_shard_size": shard, "sp_size": sp, "sp_backend": "deepspeed",
            # Rows of a padded batch change length from batch to batch.
            "sp_handler": {"sp_seq_length_is_variable": True,
                           "sp_attn_implementation": attention if attention not in (None, "auto") else "deferred"}}


def check_parallelism(cfg: dict) -> list[tuple[str, tuple, str, str | None]]:
    """Findings as (severity, key path, message, hint), as runner.plan.launch_settings.check_distributed."""
    dist = cfg["distributed"]
    cp, sp = dist["context_parallel"], dist["sequence_parallel"]
    if cp == 1 and sp == 1:
        return []
    found: list = []
    key, size = ("context_parallel", cp) if cp > 1 else ("sequence_parallel", sp)
    here = ("distributed", key)
    if cp > 1 and sp > 1:
        return [("error", here, f"context_parallel ({cp}) and sequence_parallel ({sp}) both split rows; "
                 "Accelerate runs one or the other", "keep one: context_parallel with fsdp, sequence_parallel "
                 "with deepspeed")]
    backend, want = dist["backend"], "fsdp" if cp > 1 else "deepspeed"
    if backend != want:
        found.append(("error", here, f"{key}: {size} runs only with backend {want} (the backend is {backend})",
                      "set distributed.backend: fsdp" if cp > 1 else "set distributed.backend: deepspeed"
                      + ("; or context_parallel with fsdp" if sp > 1 else "")))
    attention = cfg["model"]["attn_implementation"]
    allowed = ("auto", "sdpa") if cp > 1 else ("auto", "sdpa", "flash_attention_2")
    if attention not in allowed:
        found.append(("error", ("model", "attn_implementation"),
                      f"{key} needs {' or '.join(allowed[1:])} attention, not {attention}"
                      + (" (the ring attention replaces SDPA's kernel)" if cp > 1 else
                         " (DeepSpeed's Ulysses attention wraps only these)"),
                      f"set model.attn_implementation: {'sdpa' if cp > 1 else 'sdpa or flash_attention_2'} (auto picks sdpa)"))
    seq = cfg["sequence"]
    if seq["packing"] and (cp > 1 or attention != "flash_attention_2"):
        found.append(("error", ("sequence", "packing"),
                      f"{key} cannot keep the samples of a packed row apart: "
                      + ("the ring attention is causal over the whole row" if cp > 1 else
                         "with sdpa a packed row attends as one sample"),
                      "set sequence.packing: false (rows padded to the batch's longest)"
                      + ("" if cp > 1 else ", or model.attn_implementation: flash_attention_2")))
    multiple = 2 * cp if cp > 1 else sp
    if seq["max_length"] % multiple:
        found.append(("error", ("sequence", "max_length"),
                      f"{seq['max_length']} is not divisible by {multiple} ({'2 x context_parallel' if cp > 1 else 'sequence_parallel'}): "
                      "each process takes an equal piece of every row",
                      f"use a multiple of {multiple}, e.g. {(seq['max_length'] // multiple + 1) * multiple}"))
    nproc = dist["num_processes"]
    if nproc:
        world = nproc * dist["num_machines"]
        if world % size:
            found.append(("error", ("distributed", "num_processes"),
                          f"{key}: {size} does not divide the {world} processes "
                          f"({nproc} x {dist['num_machines']} machines)",
                          f"use a {key} that divides {world}, or {size} x k processes"))
    stage = cfg["training"]["stage"]
    if stage not in SPLIT_STAGES:
        found.append(("error", ("training", "stage"),
                      f"{key} splits each row inside the model's forward; stage {stage} scores whole sequences "
                      "(pairs, rewards or generations) and cannot take a piece of one",
                      "use stage sft or pt, or drop " + key))
    if cfg["training"]["eval_every"] or cfg["training"]["evals_per_epoch"]:
        found.append(("warning", here, f"evaluation does not split rows: each process evaluates whole rows "
                      f"of up to {seq['max_length']} tokens", "keep eval rows short, or evaluate after training "
                      "(`runner eval`)"))
    return found
