"""The GPU benchmark harness (bench/harness.py) in --smoke on the CPU: a scenario through runner and
its hand-written baseline, with the result fields a GPU run will fill; and the FLOP count and
scenario configs it relies on."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
sys.path.insert(0, str(REPO / "bench"))

import catalog  # noqa: E402
import flops  # noqa: E402
import report  # noqa: E402


def test_llama3_8b_counts_match_the_shared_baselines_model():
    c = flops.shape_counts(catalog.SHAPES["llama3_8b"])
    norms = 4096 * (2 * 32 + 1)
    assert c["decoder_matmul_params"] + 2 * c["head_params"] + norms == 8030261248  # n_params in baselines2.py
    # LoRA: 4N + 3A with A the causal attention forward over a 2048-token row.
    attn = 2 * 2 * 32 * 4096 * 2048
    assert flops.flops_per_token(catalog.SHAPES["llama3_8b"], "lora", 2048) == 4 * 6979321856 + 3 * attn
    assert flops.flops_per_token(catalog.SHAPES["llama3_8b"], "dpo_lora", 2048) == 6 * 6979321856 + 4 * attn
    full = flops.flops_per_token(catalog.SHAPES["llama32_1b"], "full", 2048, include_head=True)
    assert full == 6 * (16 * (2048 * 2048 * 2 + 2 * 2048 * 512 + 3 * 2048 * 8192) + 2048 * 128256) + 3 * 4 * 16 * 2048 * 2048
    tf = flops.useful_tflops(5974, catalog.SHAPES["llama3_8b"], "lora", 2048, 790.0)
    assert 185 < tf["tflops"] < 187 and tf["tflops"] < tf["tflops_incl_head"]  # 211 counting embeddings too
    assert tf["mfu"] == pytest.approx(tf["tflops"] / 790.0, rel=1e-3)


def test_attention_span_and_percentiles():
    assert flops.token_weighted_span([2048] * 4) == 2048
    assert flops.token_weighted_span([1, 3]) == 2.5
    assert flops.token_weighted_span([]) is None
    times = [float(i) for i in range(20, 0, -1)]
    stats = report.step_stats(times)
    assert (stats["p50"], stats["p90"], stats["p99"], stats["n"]) == (10.0, 18.0, 20.0, 20)


def test_a_result_replaces_only_its_row_of_the_results_table(tmp_path):
    table = tmp_path / "RESULTS.md"
    table.write_text((REPO / "bench" / "RESULTS.md").read_text())
    before = table.read_text().splitlines()
    side = {"status": "ok", "peak_allocated_gib": 20.5, "peak_reserved_gib": 22.0, "tflops": 300.0, "mfu": 0.3797,
            "step_time_s": {"p50": 1.25}}
    result = {"scenario": "full1b", "smoke": False, "date": "2026-12-01T10:00:00+00:00", "device": "NVIDIA H100 80GB HBM3",
              "ratio_tokens_per_s": 1.5, "flops_formula": "f",
              "runner": dict(side, tokens_per_s=30000.0), "baseline": dict(side, tokens_per_s=20000.0)}
    path = tmp_path / "full1b.json"
    path.write_text(json.dumps(result))
    assert report.main([str(path), "--results", str(table)]) == 0
    after = table.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(after) == len(before) and len(changed) == 1
    assert changed[0][0].startswith("| full1b | ")
    assert changed[0][1] == ("| full1b | 30,000 | 20,000 | 1.50× | 20.5 / 22.0 | 20.5 / 22.0 | 300.0 (38.0%) | "
                             "300.0 (38.0%) | 1.250 / 1.250 | NVIDIA H100 80GB HBM3 | 2026-12-01 |")
    result["same_launch"] = False  # one side kept from an earlier launch: the ratio says so
    path.write_text(json.dumps(result))
    assert report.main([str(path), "--results", str(table)]) == 0
    assert "| 1.50× (sides from two launches) |" in table.read_text()
    result["scenario"] = "unknown"
    path.write_text(json.dumps(result))
    assert report.main([str(path), "--results", str(table)]) == 1


def test_every_scenario_config_plans_with_the_harness_overrides(tmp_path, shared_data):
    import harness
    import modeldir
    from runner.plan.resolve import make_plan

    shapes = {}
    for scenario in catalog.SCENARIOS.values():
        if scenario.shape not in shapes:
            shapes[scenario.shape] = modeldir.build(dict(catalog.SHAPES[scenario.shape], **catalog.TINY),
                                                    tmp_path / scenario.shape, shared_data, smoke=True)
        cfg = harness.HERE / "scenarios" / scenario.config
        overrides = harness.runner_overrides(scenario, cfg, shapes[scenario.shape], shared_data, tmp_path / "work",
                                             smoke=False, cpu=False, warmup=5, measure=20)
        plan = make_plan(str(cfg), overrides)
        assert plan.model.random_init is True and plan.model.path == str(shapes[scenario.shape])
        assert plan.training.max_steps == 25 and plan.tracking.log_every == 5
        assert all(Path(d.path).parent == shared_data.resolve() for d in plan.data.datasets)
        assert plan.data.sequence.max_length == (32768 if scenario.name == "lora8b_32k" else 2048)
        if scenario.name == "lora8b_32k":  # YaRN x4 over the shape's trained positions
            assert {k: v for k, v in plan.model.rope_scaling.items() if v is not None} == {"type": "yarn", "factor": 4}
        expected = {"lora": "lora", "dpo_lora": "lora", "full": "full"}[scenario.work]
        assert plan.adapter.kind == expected, scenario.name
        assert plan.quantization.bits == (4 if scenario.name == "qlora8b" else None)
        assert (plan.training.stage == "dpo") == (scenario.work == "dpo_lora")


def _harness(tmp_path, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "bench" / "harness.py"), *args, "--smoke", "--out", str(tmp_path / "out"),
           "--work", str(tmp_path / "work"), "--data", str(SHARED / "data"), "--baselines", str(SHARED / "baselines")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_a_baseline_that_needs_cuda_is_reported_skipped(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the shared baseline would run")
    proc = _harness(tmp_path, "lora8b_packed", "--side", "baseline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "lora8b_packed-smoke.json").read_text())
    assert result["baseline"]["status"] == "skipped" and "CUDA" in result["baseline"]["reason"]
    assert result["runner"] == {"status": "not run"} and result["ratio_tokens_per_s"] is None
    assert "| lora8b_packed (smoke) | not run | skipped |" in proc.stdout


@pytest.mark.slow
def test_full1b_smoke_runs_runner_and_its_baseline(tmp_path):
    proc = _harness(tmp_path, "full1b")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "out" / "full1b-smoke.json").read_text())
    run, base = result["runner"], result["baseline"]
    assert run["status"] == "ok" and base["status"] == "ok", (run, base)
    assert result["smoke"] is True and result["same_launch"] is True and result["date"].startswith("20")
    assert {"torch", "transformers", "peft", "trl"} <= {k for k, v in result["versions"].items() if v}
    assert result["device"]
    # Every wiki document is longer than 128 tokens: each packed row is one truncated sample, no padding.
    assert run["tokens"] == run["timed_steps"] * 2 * 128 == 512
    assert 120 < run["attn_ctx"] <= 128.0  # pieces of split documents fill the rows; the last piece is shorter
    assert run["tokens_per_s"] == pytest.approx(run["tokens"] / run["window_s"], rel=1e-3, abs=0.1)
    assert run["step_time_s"]["n"] == 2 and base["step_time_s"]["n"] == 3  # baseline: STEPS=3 after 3 warm-up
    assert run["optimizer_steps"] == 4 and base["optimizer_steps"] == 6
    assert base["reported"]["tokens_per_s"] == base["tokens_per_s"] > 0
    assert result["ratio_tokens_per_s"] == round(run["tokens_per_s"] / base["tokens_per_s"], 3)
    for side in (run, base):
        assert side["tflops"] > 0 and side["tflops_incl_head"] > side["tflops"]
        memory = side["peak_allocated_gib"] if side["peak_allocated_gib"] is not None else side["peak_rss_gib"]
        assert memory > 0
        assert 0 < side["step_time_s"]["min"] <= side["step_time_s"]["p50"] <= side["step_time_s"]["max"]
        # Time to first step: imports, data, model and the first step all fall inside the probed process.
        assert side["step_time_s"]["min"] < side["first_step_s"] < side["wall_s"]
    assert "6*N + 3*A" in result["flops_formula"]
    row = (tmp_path / "out" / "full1b-smoke.md").read_text()
    assert row.startswith(report.HEADER) and "| full1b (smoke) |" in row


def test_run_stamped_keeps_the_output_and_times_each_line_even_when_cut_off():
    import sides

    code = "import time; print('building', flush=True); time.sleep(0.3); print('\\rbar 1\\rbar 2', flush=True)"
    out, stamped, rc = sides.run_stamped([sys.executable, "-c", code], env=dict(os.environ), timeout=30)
    assert rc == 0 and out == "building\n\rbar 1\rbar 2\n", "the plain output is what the parsers read"
    first, second = stamped.rstrip("\n").split("\n")
    assert first.endswith("] building") and second.endswith("] \rbar 1\rbar 2")
    assert float(second[1:].split(" s]")[0]) >= 0.3
    code = "import time; print('loading', flush=True); time.sleep(30)"
    out, stamped, rc = sides.run_stamped([sys.executable, "-c", code], env=dict(os.environ), timeout=1.5)
    assert rc == 124 and out == "loading\n" and "] loading" in stamped


def test_probe_cuda_gate_holds_the_first_cuda_use_until_the_gate_opens(tmp_path):
    """--overlap: a baseline's CUDA initialisation waits for runner's end (here a file made 1.5 s in).
    On this CPU machine the CUDA call then fails, after the gate, as it would have anyway."""
    import time

    script = tmp_path / "uses_cuda.py"
    script.write_text("import time, torch\nprint('cpu work done', time.time(), flush=True)\n"
                      "try:\n    torch.zeros(1, device='cuda')\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
                      "print('cuda reached', time.time(), flush=True)\n")
    gate = tmp_path / "gate"
    env = {**os.environ, "BENCH_CUDA_GATE": str(gate), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "probe.py"), "--out", str(tmp_path / "p.json"),
                             str(script)], env=env, stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first.startswith("cpu work done"), first  # the CPU part runs while the gate is shut
    time.sleep(1.5)
    opened = time.time()
    gate.touch()
    out = proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    reached = float(out.strip().splitlines()[-1].split()[-1])
    assert reached >= opened
    assert json.loads((tmp_path / "p.json").read_text())["cuda_gate_waited_s"] >= 1.0


@pytest.mark.slow
def test_overlap_runs_both_sides_in_one_launch(tmp_path):
    proc = _harness(tmp_path, "full1b", "--overlap")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "out" / "full1b-smoke.json").read_text())
    run, base = result["runner"], result["baseline"]
    assert run["status"] == "ok" and base["status"] == "ok", (run, base)
    assert result["same_launch"] is True
    # CPU baseline: it never asks for CUDA nor holds CUDA memory
    assert base["overlap"] == {"cuda_gate_waited_s": 0.0, "gpu_first_used_after_runner_s": None}


def test_probe_cuda_gate_lets_an_import_time_device_query_through(tmp_path):
    """bitsandbytes asks for the compute capability while it is imported: holding that would hold the
    baseline's whole CPU setup. The gate never opens here, and the script still finishes."""
    (tmp_path / "queries_at_import.py").write_text(
        "import torch\ntry:\n    torch.cuda.init()\nexcept Exception:\n    pass\n")
    script = tmp_path / "main.py"
    script.write_text("import queries_at_import\nprint('imported', flush=True)\n")
    env = {**os.environ, "BENCH_CUDA_GATE": str(tmp_path / "never"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "probe.py"), "--out", str(tmp_path / "p.json"),
                           str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "imported" in proc.stdout, proc.stderr[-2000:]


def test_overlap_verdict_rejects_a_baseline_that_used_the_gpu_before_runner_ended():
    import harness

    early = harness.overlap_verdict({"status": "ok", "_gate": {"cuda_gate_waited_s": 0.0,
                                                               "cuda_first_alloc_at": 100.0}}, runner_ended=150.0)
    assert early["status"] == "overlapped" and "50.0 s before" in early["reason"]
    assert early["overlap"]["gpu_first_used_after_runner_s"] == -50.0
    late = harness.overlap_verdict({"status": "ok", "_gate": {"cuda_gate_waited_s": 3.2,
                                                              "cuda_first_alloc_at": 200.0}}, runner_ended=150.0)
    assert late["status"] == "ok" and late["overlap"] == {"cuda_gate_waited_s": 3.2,
                                                          "gpu_first_used_after_runner_s": 50.0}


@pytest.mark.slow
def test_vlm_bench_smoke_runs_the_fast_recipe_beside_the_baseline(tmp_path):
    """bench/vlm_bench.py --smoke: both sides train the tiny Qwen2.5-VL; runner's side runs the fast
    recipe's settings (packed micro batches, chunked loss), the baseline its own."""
    import yaml

    proc = subprocess.run([sys.executable, str(REPO / "bench" / "vlm_bench.py"), "--smoke", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work"), "--data", str(SHARED / "data"), "--repeat", "2"],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "out" / "vlm7b-smoke.json").read_text())
    assert result["runner"]["status"] == result["baseline"]["status"] == "ok", result
    assert result["recipe"] == "fast" and result["runner"]["tokens_per_s"] > 0 and result["baseline"]["tokens_per_s"] > 0
    cfg = yaml.safe_load(Path(result["runner_config"]).read_text())
    assert cfg["sequence"]["packing"] is True and cfg["training"]["micro_batch_size"] == 8
    assert cfg["training"]["gradient_checkpointing"] is False and result["baseline"]["gc"] is True
    stored = json.loads((tmp_path / "work" / "smoke" / "run" / "plan.json").read_text())
    assert stored["runtime"]["fast_path"]["chunked_loss"] is True
