"""Training on two real CPU processes through `runner launch` (torchrun + gloo), on a tiny random
Llama and the shared data. Each run is watched by the probe (tests/fixtures/workers/probe.py, loaded
through site/sitecustomize.py) that records the world size and the wrapper the model really got:
Accelerate falls back to DDP for FSDP on CPU without a word, so "it trained" proves nothing.

- DDP: per-step losses and the trained adapter match a one-process run with the same global batch.
- FSDP2 (fully_shard on gloo), LoRA and full fine-tuning: the model is an FSDPModule with DTensor
  parameters, the losses match, and the saved result loads on one process.
- Multi-node on one machine: two `runner launch --machine-rank` commands of one process each train
  to the losses of the two-process run.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny_model import save_poisoned_model, save_tiny_model, write_config

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "tests" / "fixtures" / "workers" / "site"
GLOBAL_BATCH = 4
STEPS = 4

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(argv, *, probe_dir: Path | None = None, env_extra=None, wait=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SITE), str(REPO)]),
           "MASTER_PORT": str(free_port()), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    if probe_dir is not None:
        probe_dir.mkdir(parents=True, exist_ok=True)
        env["RUNNER_PROBE_DIR"] = str(probe_dir)
    env.update(env_extra or {})
    proc = subprocess.Popen([sys.executable, "-m", "runner", *map(str, argv)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if not wait:
        return proc
    out, err = finish(proc)
    assert proc.returncode == 0, err[-4000:]
    return out, err


def finish(proc, timeout: float = 360):
    """communicate(), but a hung run is stopped through runner launch's own SIGTERM forwarding
    (its workers die with it) and reported with the tail of its output."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"the run hung for {timeout:.0f} s and was stopped:\n{err[-3000:]}")


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in rows if r.get("kind") == "train"]


def probes(probe_dir: Path) -> list[dict]:
    found = sorted(probe_dir.glob("rank*.json"))
    return [json.loads(p.read_text()) for p in found]


def safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# The chunked-loss fast path calls the decoder inside the DDP / FSDP wrapper directly (see
# test_default_fast_path_under_ddp_and_fsdp below): these runs turn it off to test the launch path.
CHUNKED = False


def make_cfg(root: Path, model_dir: Path, *, micro: int, backend: str = "auto", full: bool = False, name="run",
             fsdp=None, chunked=CHUNKED, fused_lora="auto") -> Path:
    distributed = {"backend": backend, **({"fsdp": fsdp} if fsdp else {})}
    return write_config(root, model_dir, name=name,
                        adapter={"kind": "full"} if full else None,
                        training={"max_steps": STEPS, "micro_batch_size": micro, "gradient_accumulation": 1,
                                  "learning_rate": 1e-3 if full else 5e-3, "chunked_loss": chunked,
                                  "fused_lora": fused_lora},
                        extra={"distributed": distributed})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_dir) -> dict:
    """One process, global batch 4: the losses and adapter every two-process run must reproduce."""
    root = tmp_path_factory.mktemp("single")
    cfg = make_cfg(root, model_dir, micro=GLOBAL_BATCH, name="single")
    run_cli(["train", cfg], probe_dir=root / "probe")
    run = root / "run"
    return {"losses": losses(run), "adapter": safetensors(run / "adapter_model.safetensors"),
            "probe": probes(root / "probe")}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, model_dir) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    cfg = make_cfg(root, model_dir, micro=GLOBAL_BATCH // 2, name="ddp")
    started = time.monotonic()
    run_cli(["launch", cfg, "--cpu", "--num-processes", "2"], probe_dir=root / "probe")
    return {"root": root, "run": root / "run", "probe": probes(root / "probe"), "seconds": time.monotonic() - started}


def test_one_process_reference_is_not_distributed(reference):
    (probe,) = reference["probe"]
    assert probe["world_size"] == 1 and not probe["is_ddp"] and not probe["is_fsdp2"]
    assert len(reference["losses"]) == STEPS


def test_ddp_two_processes_match_one_process(reference, ddp_run):
    probe = ddp_run["probe"]
    assert len(probe) == 2
    for p in probe:
        assert p["world_size"] == 2 and p["pg_backend"] == "gloo" and p["is_ddp"] and not p["is_fsdp2"]
        assert p["wrapper"] == "DistributedDataParallel" and p["threads"] == 1
        assert p["env"]["NCCL_NVLS_ENABLE"] == "0" and p["env"]["NVSHMEM_DISABLE_NVLS"] == "1"
        assert p["env"]["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    assert len(losses(ddp_run["run"])) == STEPS
    assert losses(ddp_run["run"]) == pytest.approx(reference["losses"], rel=1e-5)
    adapter = safetensors(ddp_run["run"] / "adapter_model.safetensors")
    assert adapter.keys() == reference["adapter"].keys()
    # all-reduce sums the two halves' gradients in another order than one process does: float32
    # noise that Adam's normalisation carries into the weights (3e-6 seen on weights of 0.19, where
    # one rank's gradient lost or doubled moves them by 1e-3)
    for key, value in adapter.items():
        assert value.allclose(reference["adapter"][key], atol=1e-5), key
    plan = json.loads((ddp_run["run"] / "plan.json").read_text())
    assert plan["runtime"]["world_size"] == 2 and plan["runtime"]["backend"] == "ddp"
    assert (ddp_run["run"] / "accelerate_config.yaml").is_file()


def test_fsdp2_lora_shards_on_two_cpu_processes_and_saves_a_loadable_adapter(tmp_path, model_dir, reference):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(tmp_path, model_dir, micro=GLOBAL_BATCH // 2, backend="fsdp", name="fsdp")
    run_cli(["launch", cfg, "--cpu", "--num-processes", "2"], probe_dir=tmp_path / "probe")
    found = probes(tmp_path / "probe")
    assert len(found) == 2
    for p in found:
        assert p["world_size"] == 2 and p["pg_backend"] == "gloo"
        assert p["is_fsdp2"] and not p["is_ddp"] and p["dtensor_params"], p
        assert p["distributed_type"] == "DistributedType.FSDP"
        layers = [m for m in p["fsdp_modules"] if m.endswith(("layers.0", "layers.1"))]
        assert len(layers) == 2, "each decoder layer is its own FSDP unit (the wrap class was found)"
    run = tmp_path / "run"
    assert losses(run) == pytest.approx(reference["losses"], rel=1e-5)
    plan = json.loads((run / "plan.json").read_text())
    assert plan["runtime"]["backend"] == "fsdp" and plan["runtime"]["fsdp_wrap_class"] == "LlamaDecoderLayer"
    # Saved with the default sharded state dict type: gathered into ordinary safetensors all the same.
    adapter = safetensors(run / "adapter_model.safetensors")
    for key, value in adapter.items():
        # FSDP2 reduce-scatters the gradients: fp32 sums in another order than one process, a few
        # 1e-6 apart after Adam's steps (3.6e-6 seen on weights of 0.19)
        assert type(value) is torch.Tensor and value.allclose(reference["adapter"][key], atol=1e-5), key
    torch.set_num_threads(1)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run)
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == model.config.vocab_size


def test_fsdp2_full_fine_tuning_saves_a_model_that_loads_on_one_process(tmp_path, model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    single_cfg = make_cfg(tmp_path / "one", model_dir, micro=GLOBAL_BATCH, full=True, name="one")
    run_cli(["train", single_cfg])
    cfg = make_cfg(tmp_path / "two", model_dir, micro=GLOBAL_BATCH // 2, backend="fsdp", full=True, name="two",
                   fsdp={"state_dict_type": "full"})
    run_cli(["launch", cfg, "--cpu", "--num-processes", "2"], probe_dir=tmp_path / "probe")
    assert all(p["is_fsdp2"] and p["dtensor_params"] for p in probes(tmp_path / "probe"))
    one, two = tmp_path / "one" / "run", tmp_path / "two" / "run"
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    torch.set_num_threads(1)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    trained = AutoModelForCausalLM.from_pretrained(two)
    reference = AutoModelForCausalLM.from_pretrained(one)
    base_sd, trained_sd, ref_sd = base.state_dict(), trained.state_dict(), reference.state_dict()
    assert trained_sd.keys() == ref_sd.keys()
    changed = [k for k in trained_sd if not trained_sd[k].equal(base_sd[k])]
    assert changed, "the FSDP run changed the weights"
    for key in trained_sd:
        assert trained_sd[key].allclose(ref_sd[key], atol=1e-5), key


def test_two_nodes_of_one_process_match_the_two_process_run(tmp_path, model_dir, ddp_run):
    cfg = make_cfg(tmp_path, model_dir, micro=GLOBAL_BATCH // 2, name="nodes")
    port = str(free_port())
    nodes = []
    for rank in (0, 1):
        argv = ["launch", cfg, f"output.dir={tmp_path / f'node{rank}'}", "distributed.num_machines=2",
                "--cpu", "--num-processes", "1", "--machine-rank", str(rank)]
        nodes.append(run_cli(argv, probe_dir=tmp_path / f"probe{rank}", wait=False,
                             env_extra={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}))
    for proc in nodes:
        _, err = finish(proc)
        assert proc.returncode == 0, err[-4000:]
    for rank in (0, 1):
        (p,) = probes(tmp_path / f"probe{rank}")
        assert p["world_size"] == 2 and p["is_ddp"] and p["env"]["RANK"] == str(rank)
        assert p["env"]["MASTER_ADDR"] == "127.0.0.1"
    assert losses(tmp_path / "node0") == pytest.approx(losses(ddp_run["run"]), rel=1e-5)
    acc = (tmp_path / "node1" / "accelerate_config.yaml").read_text()
    assert "machine_rank: 1" in acc and "num_machines: 2" in acc


def _calls_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            for node in ast.walk(tree) if isinstance(node, ast.Call)}


def test_train_makes_the_distributed_calls_itself():
    """The FSDP tests above run the product path: these calls are what make them FSDP2 and saved."""
    train = REPO / "runner" / "train"
    calls = set().union(*(_calls_in(train / f) for f in ("recipe.py", "finish.py", "arguments.py")))
    assert {"shard_on_cpu", "prepare_final_save", "check_launcher", "backend_arguments"} <= calls


def test_fsdp2_sharded_checkpoint_resumes_to_the_same_result(tmp_path, model_dir):
    import shutil

    cfg = write_config(tmp_path, model_dir, name="resume",
                       training={"max_steps": STEPS, "micro_batch_size": GLOBAL_BATCH // 2, "gradient_accumulation": 1,
                                 "chunked_loss": CHUNKED},
                       extra={"distributed": {"backend": "fsdp"}, "output": {"dir": str(tmp_path / "run"), "save_every": 2}})
    argv = ["launch", cfg, "--cpu", "--num-processes", "2"]
    run_cli(argv, probe_dir=tmp_path / "probe")
    assert all(p["is_fsdp2"] for p in probes(tmp_path / "probe"))
    run = tmp_path / "run"
    whole_losses = losses(run)
    whole_adapter = safetensors(run / "adapter_model.safetensors")
    shards = sorted(p.name for p in (run / "checkpoints" / "checkpoint-2" / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"], "one shard per rank (sharded state dict)"
    # As if the run had stopped after the step-2 checkpoint.
    for name in ("RUN_COMPLETE", "adapter_model.safetensors", "adapter_config.json"):
        (run / name).unlink()
    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    _, err = run_cli(argv, probe_dir=tmp_path / "probe")
    assert "resuming from checkpoint-2" in err
    assert losses(run) == whole_losses
    resumed = safetensors(run / "adapter_model.safetensors")
    for key, value in resumed.items():
        assert value.equal(whole_adapter[key]), key


@pytest.mark.parametrize("backend, chunked", [
    ("ddp", True),  # through DDP's wrapper with the LM head swapped out, scaled as the Trainer scales
    ("fsdp", False),  # off under sharded parameters
])
def test_default_fast_path_under_ddp_and_fsdp(tmp_path, model_dir, reference, backend, chunked):
    cfg = make_cfg(tmp_path, model_dir, micro=GLOBAL_BATCH // 2, backend=backend, name=backend, chunked="auto")
    proc = run_cli(["launch", cfg, "--cpu", "--num-processes", "2"], probe_dir=tmp_path / "probe",
                   wait=False)
    _, err = finish(proc)
    assert proc.returncode == 0, err[-2000:]
    fast = json.loads((tmp_path / "run" / "plan.json").read_text())["runtime"]["fast_path"]
    assert fast["chunked_loss"] is chunked, fast
    assert losses(tmp_path / "run") == pytest.approx(reference["losses"], rel=1e-5)
    adapter = safetensors(tmp_path / "run" / "adapter_model.safetensors")
    for key, value in adapter.items():  # fsdp: reduce-scattered fp32 sums, see the test above
        assert value.allclose(reference["adapter"][key], atol=1e-5), key


def test_chunked_loss_under_ddp_trains_the_lm_head_as_one_process_does(tmp_path, model_dir):
    """Full fine-tuning: the LM head runs outside DDP's forward (chunk by chunk), yet its gradient is
    all-reduced with the rest and scaled as the Trainer scales the model's own loss."""
    one = make_cfg(tmp_path / "one", model_dir, micro=GLOBAL_BATCH, full=True, name="one", chunked=False)
    run_cli(["train", one])
    two = make_cfg(tmp_path / "two", model_dir, micro=GLOBAL_BATCH // 2, full=True, name="two", chunked=True)
    run_cli(["launch", two, "--cpu", "--num-processes", "2"])
    assert json.loads((tmp_path / "two" / "run" / "plan.json").read_text())["runtime"]["fast_path"]["chunked_loss"]
    assert losses(tmp_path / "two" / "run") == pytest.approx(losses(tmp_path / "one" / "run"), rel=1e-5)
    ref = safetensors(tmp_path / "one" / "run" / "model.safetensors")
    got = safetensors(tmp_path / "two" / "run" / "model.safetensors")
    assert got.keys() == ref.keys()
    for key, value in got.items():
        assert value.allclose(ref[key], atol=1e-5), key


def test_fused_lora_under_ddp_matches_the_plain_one_process_run(tmp_path, model_dir, reference):
    """runner.train.fast.fused_lora's autograd function feeds DDP's gradient hooks like PEFT's layers do."""
    cfg = make_cfg(tmp_path, model_dir, micro=GLOBAL_BATCH // 2, backend="ddp", name="fused", fused_lora=True)
    proc = run_cli(["launch", cfg, "--cpu", "--num-processes", "2"], probe_dir=tmp_path / "probe", wait=False)
    _, err = finish(proc)
    assert proc.returncode == 0, err[-2000:]
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["runtime"]["fast_path"]["fused_lora"] and plan["launch"]["fused_lora_layers"] > 0
    assert losses(tmp_path / "run") == pytest.approx(reference["losses"], rel=1e-5)
    adapter = safetensors(tmp_path / "run" / "adapter_model.safetensors")
    for key, value in adapter.items():
        assert value.allclose(reference["adapter"][key], atol=1e-5), key


def test_non_finite_steps_under_ddp_stop_every_rank_with_exit_2(tmp_path, model_dir):
    """The device-side guard under DDP (skip flag all-reduced across ranks): past
    training.max_nonfinite every rank stops at the same logging step, none hangs, the run exits 2
    naming the step, and no finished run is left behind."""
    poisoned = save_poisoned_model(tmp_path / "poisoned")
    cfg = write_config(tmp_path, poisoned, name="nan", adapter={"kind": "full"},
                       training={"max_steps": STEPS, "micro_batch_size": GLOBAL_BATCH // 2,
                                 "optimizer": "adamw_torch_fused", "chunked_loss": CHUNKED},
                       extra={"distributed": {"backend": "ddp"}})
    proc = run_cli(["launch", cfg, "--cpu", "--num-processes", "2"], wait=False)
    _, err = finish(proc)
    assert proc.returncode == 2, err[-3000:]
    assert "non-finite loss or gradients at step" in err and "training.max_nonfinite is 0" in err
    assert not (tmp_path / "run" / "RUN_COMPLETE").exists()
