"""bench/multigpu.py, the script issue 6 runs on 2-8 GPUs, proven on the CPU: --dry-run plans every
launch of the matrix as on an 8-GPU host (through `runner launch --dry-run`), --smoke runs the tiny
version end to end on 1-2 CPU processes and writes the per-GPU figures."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "multigpu.py"


def run_bench(tmp_path, *flags, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run([sys.executable, str(BENCH), *flags, "--work", str(tmp_path / "work"), "--out",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def test_dry_run_plans_the_whole_matrix_on_eight_gpus(tmp_path):
    result = run_bench(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    planned = json.loads((tmp_path / "out" / "multigpu-dry-run.json").read_text())["planned"]
    runs = {(p["run"], p["gpus"]): p for p in planned}
    scaling = {(name, k) for name in ("lora_ddp", "full_fsdp2", "full_zero3") for k in (1, 2, 4, 8)}
    assert set(runs) == scaling | {("cp_128k", 8), ("cp_short", 8), ("cp_short_ref", 1), ("qlora70b", 2),
                                   ("qlora70b", 4), ("qlora70b", 8), ("zero3_offload", 1), ("zero3_offload", 2),
                                   ("accelerate", 2)}
    one = shlex.split(runs["lora_ddp", 1]["launches"])
    assert one[4:7] == ["-m", "runner", "train"], "one GPU, LoRA: no launcher"
    for key in [k for k in runs if k[0] != "accelerate" and k[1] > 1]:
        argv = shlex.split(runs[key]["launches"])
        assert argv[:3] == ["NCCL_NVLS_ENABLE=0", "TORCH_SYMM_MEM_DISABLE_MULTICAST=1", "NVSHMEM_DISABLE_NVLS=1"]
        assert argv[4:6] == ["-m", "accelerate.commands.launch"], key
        assert f"distributed.num_processes={key[1]}" in argv
    acc = runs["accelerate", 2]["command"]
    assert "--multi_gpu --num_processes=2" in acc and "-m runner train" in acc
    assert "distributed.backend=deepspeed distributed.deepspeed.zero_stage=3" in runs["full_zero3", 8]["runner_launch"]
    assert "## full_fsdp2@8 (exit 0)" in result.stdout and "distributed_type: FSDP" in result.stdout
    cp = runs["cp_128k", 8]["runner_launch"]
    assert "distributed.context_parallel=8" in cp and "sequence.max_length=131072" in cp and "sequence.packing=false" in cp
    cp_plan = result.stdout.split("## cp_128k@8 (exit 0)", 1)[1].split("## ", 1)[0]
    assert "cp_size: 8" in cp_plan and "dp_shard_size: 1" in cp_plan
    ref = runs["cp_short_ref", 1]["runner_launch"]
    assert "distributed.context_parallel" not in ref and "sequence.max_length=4096" in ref
    assert "sequence.max_length=4096" in runs["cp_short", 8]["runner_launch"]
    q = runs["qlora70b", 4]["runner_launch"]
    assert "quantization.bits=4 quantization.quant_storage=bfloat16" in q and "model-70b-config" in q
    off = runs["zero3_offload", 1]["runner_launch"]
    assert "offload_optimizer=cpu" in off and "offload_params=cpu" in off
    assert '"offload_param": {' in result.stdout.split("## zero3_offload@1", 1)[1].split("## ", 1)[0]
    assert any((tmp_path / "work").glob("long-*.txt")), "the long rows' document is written"
    assert not (tmp_path / "work" / "runs").exists() or not any((tmp_path / "work" / "runs").rglob("*.yaml")), \
        "a dry run writes no launch files"


@pytest.mark.slow
def test_smoke_runs_every_path_on_cpu_and_reports_per_gpu_figures(tmp_path):
    result = run_bench(tmp_path, "--smoke")
    report = json.loads((tmp_path / "out" / "multigpu-smoke.json").read_text())
    rows = {(r["run"], r["gpus"]): r for r in report["results"]}
    assert set(rows) == {("lora_ddp", 1), ("lora_ddp", 2), ("full_fsdp2", 1), ("full_fsdp2", 2), ("cp_short_ref", 1),
                         ("accelerate", 1)}, \
        "skipped: full_zero3 and zero3_offload without deepspeed, and what only GPUs run (context parallel, 70B QLoRA)"
    ref = rows["cp_short_ref", 1]
    assert ref["status"] == "ok" and ref["fsdp2"] and ref["reload"] == "ok", "the unsplit CP reference: FSDP2 on one process"
    one, two = rows["lora_ddp", 1], rows["lora_ddp", 2]
    assert one["status"] == "ok" and two["status"] == "ok", result.stderr[-3000:]
    assert two["wrapper"] == "DistributedDataParallel" and two["ranks_reported"] == 2
    for row in (one, two):
        assert row["tokens_per_s_per_gpu"] > 0 and row["peak_rss_gib_max"] > 0
        assert all(r["timed_steps"] == 2 for r in row["per_rank"])
    assert two["tokens_per_s_total"] == pytest.approx(sum(r["tokens_per_s"] for r in two["per_rank"]), rel=1e-3)
    assert one["scaling_efficiency"] == 1.0
    assert two["scaling_efficiency"] == pytest.approx(two["tokens_per_s_per_gpu"] / one["tokens_per_s_per_gpu"], abs=1e-3)
    check = report["cross_check"]
    assert check["gpus"] == 1 and check["same_first_losses"], check
    # One global batch at every size: 1 process accumulates 2 micro batches, 2 processes take one each.
    assert (one["gradient_accumulation"], two["gradient_accumulation"]) == (2, 1)
    parity = {(p["run"], p["gpus"]): p for p in report["parity"]}
    assert set(parity) == {("lora_ddp", 2), ("full_fsdp2", 2)}, parity
    for p in parity.values():
        assert p["reference"][1] == 1 and p["global_batch_same"] and p["steps"] == 4 and p["match"], p
    assert one["reload"] == "ok" and two["reload"] == "ok", "each saved result loads on one device"
    fsdp = rows["full_fsdp2", 2]
    # The bench names the wrapper the model really got: FSDP2, or Accelerate's silent DDP fallback.
    assert (fsdp["status"] == "ok" and fsdp["fsdp2"]) or \
        fsdp["status"] == "wrong wrapper: DistributedDataParallel, not FSDP2", fsdp["status"]
    assert result.returncode == (0 if fsdp["status"] == "ok" else 1)
    table = (tmp_path / "out" / "multigpu-smoke.md").read_text()
    assert "| lora_ddp | 2 | DistributedDataParallel |" in table and "first losses" in table
    assert "lora_ddp at 2 GPUs vs 1 GPU, same global batch: 4 per-step losses of the first epoch" in table


def test_ddp_parity_flags_a_curve_that_leaves_the_one_gpu_curve_inside_the_first_epoch():
    sys.path.insert(0, str(REPO / "bench"))
    import multigpu_report as multigpu

    epochs = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2]

    def run(gpus, losses, accumulation=1):
        return {"run": "lora_ddp", "gpus": gpus, "gradient_accumulation": accumulation, "all_losses": losses,
                "all_epochs": epochs[:len(losses)]}

    one = run(1, [10.4, 9.8, 9.1, 8.5, 8.0, 7.9], accumulation=2)
    [good] = multigpu.ddp_parity([one, run(2, [10.4, 9.81, 9.1, 8.51, 7.2, 7.0])])
    assert good["match"] and good["global_batch_same"] and good["steps"] == 4, "the epoch's last step is left out"
    [bad] = multigpu.ddp_parity([one, run(2, [10.4, 9.9, 9.3, 8.8, 8.0, 7.9])])
    assert not bad["match"] and bad["max_rel_diff"] == pytest.approx(0.3 / 8.5)
    assert not multigpu.ddp_parity([one, run(2, [10.4, 9.8])])[0]["match"], "too few steps to compare"
    assert not multigpu.ddp_parity([one, run(2, [10.4, 9.8, 9.1, 8.5], accumulation=2)])[0]["global_batch_same"]


def test_training_steps_join_the_optimizer_sub_steps_of_zero3():
    sys.path.insert(0, str(REPO / "bench"))
    import multigpu_report as multigpu

    # Plain optimizer: one hook call per training step.
    assert multigpu.training_steps([1.0, 1.1], [8, 8, 8]) == [(None, 8), (1.0, 8), (1.1, 8)]
    # ZeRO-3: three hook calls per step, tokens fed before the first of them.
    times = [0.01, 0.02, 1.0, 0.01, 0.02, 1.2, 0.01, 0.02]
    fed = [8, 0, 0, 8, 0, 0, 8, 0, 0]
    steps = multigpu.training_steps(times, fed)
    assert [n for _, n in steps] == [8, 8, 8]
    assert steps[0][0] is None and steps[1][0] == pytest.approx(1.03), "the first step has no start"
    assert steps[2][0] == pytest.approx(1.23)
    ranks = [{"rank": 0, "step_times_s": times, "tokens_per_step": fed}]
    summary = multigpu.summarise(ranks, warmup=1)
    assert summary["per_rank"][0]["timed_steps"] == 2
    assert summary["tokens_per_s_per_gpu"] == pytest.approx(16 / 2.26, abs=0.1)


def test_the_matrix_at_four_gpus_and_each_runs_overrides(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    import multigpu_matrix as matrix

    chosen = matrix.plan_runs(4, [])
    assert ("lora_ddp", 4) in chosen and ("lora_ddp", 8) not in chosen and ("cp_128k", 4) in chosen
    assert [w for n, w in chosen if n == "qlora70b"] == [2, 4] and [w for n, w in chosen if n == "zero3_offload"] == [1, 2]
    assert matrix.plan_runs(8, ["qlora70b@4", "cp_short"]) == [("cp_short", 8), ("qlora70b", 4)]
    ctx = {"smoke": False, "cpu": False, "gpus": 8, "warmup": 5, "steps": 20, "work": tmp_path, "data_dir": tmp_path,
           "long_text": tmp_path / "long.txt", "model_dirs": {"llama3_8b": tmp_path / "m8", "llama3_70b": tmp_path / "m70"}}
    lora = matrix.overrides("lora_ddp", 2, ctx)
    assert "training.gradient_accumulation=4" in lora and "training.max_steps=25" in lora
    cp = matrix.overrides("cp_short", 8, ctx)
    assert {"distributed.context_parallel=8", "training.gradient_accumulation=1", "sequence.max_length=4096",
            f"datasets.0.path={tmp_path / 'long.txt'}", "training.max_steps=12"} <= set(cp)
    assert "distributed.context_parallel=1" not in matrix.overrides("cp_short_ref", 1, ctx)
    q = matrix.overrides("qlora70b", 8, ctx)
    assert f"model.path={tmp_path / 'm70'}" in q and "model.random_init=false" in q


def test_parity_pairs_each_scaling_run_with_its_smallest_and_the_split_run_with_its_unsplit_one():
    sys.path.insert(0, str(REPO / "bench"))
    import multigpu_report as report

    epochs = [0.1 * i for i in range(1, 9)]
    curve = [10.0, 9.5, 9.1, 8.8, 8.6, 8.4]

    def row(run, gpus, losses, accumulation=1, split=1):
        return {"run": run, "gpus": gpus, "gradient_accumulation": accumulation, "split": split,
                "all_losses": losses, "all_epochs": epochs[:len(losses)]}

    results = [row("full_fsdp2", 1, [], 8), row("full_fsdp2", 2, curve, 4), row("full_fsdp2", 8, curve, 1),
               row("cp_short", 8, [x * 1.001 for x in curve], 1, split=8), row("cp_short_ref", 1, curve, 1)]
    found = {(p["run"], p["gpus"]): p for p in report.parity(results)}
    assert set(found) == {("full_fsdp2", 8), ("cp_short", 8)}, "a run that left no losses is no reference"
    assert found["full_fsdp2", 8]["reference"] == ["full_fsdp2", 2] and found["full_fsdp2", 8]["match"]
    split = found["cp_short", 8]
    assert split["reference"] == ["cp_short_ref", 1] and split["global_batch_same"] and split["match"]
    results[3]["all_losses"] = [x * 1.01 for x in curve]
    assert not {(p["run"], p["gpus"]): p for p in report.parity(results)}["cp_short", 8]["match"]
    text = report.markdown({"device": "x", "date": "d", "results": [], "parity": report.parity(results)})
    assert "cp_short at 8 GPUs vs cp_short_ref at 1 GPU, same global batch: 6 per-step losses" in text
