"""Semantic checks for distributed combinations that are valid key by key but fail late (on a GPU,
after the model loaded) in peers' trackers. Each finding names the keys and the fix, and `runner
lint` points at the line.

- The checks runner/config/checks.py has: QLoRA under FSDP / ZeRO-3 needs quant_storage == model.dtype,
  8-bit weights cannot be sharded, activation checkpointing twice, DoRA sharded, 8-bit optimizers
  sharded, several machines without an address.
- The ones of runner.plan.launch_settings.check_distributed, which runner.config.checks.check runs: tested directly
  and through `runner lint`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from runner.cli import main
from runner.plan.launch_settings import check_distributed, zero_stage
from runner.config import schema
from runner.config.load import load

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "configs"


def write(tmp_path, text: str, name: str = "cfg.yaml") -> Path:
    head = (f"model: {{path: {FIXTURES / 'tiny-model'}, dtype: bfloat16}}\n"
            f"datasets: [{{path: {FIXTURES / 'data' / 'alpaca_small.json'}}}]\n"
            f"data: {{cache_dir: {tmp_path / 'cache'}}}\n")
    path = tmp_path / name
    path.write_text(head + text)
    return path


def lint(capsys, path) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["lint", str(path)])
    return code, capsys.readouterr().err


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


# --- the checks runner/config/checks.py has ---

EXISTING = [
    # (config tail, severity, key named, words, line holding)
    ("adapter: {kind: lora}\nquantization: {bits: 4}\ndistributed: {backend: fsdp}\n",
     "error", "quantization.quant_storage", "needs quant_storage equal to model.dtype", "quantization:"),
    ("adapter: {kind: lora}\nquantization: {bits: 4, quant_storage: float16}\n"
     "distributed: {backend: deepspeed, deepspeed: {zero_stage: 3}}\n",
     "error", "quantization.quant_storage", "ZeRO-3", "quant_storage"),
    ("adapter: {kind: lora}\nquantization: {bits: 8}\ndistributed: {backend: fsdp}\n",
     "error", "quantization.bits", "8-bit weights cannot be sharded", "bits: 8"),
    ("training: {gradient_checkpointing: true}\ndistributed:\n  backend: fsdp\n  fsdp: {activation_checkpointing: true}\n",
     "error", "training.gradient_checkpointing", "activation checkpointing is on twice", "gradient_checkpointing"),
    ("adapter: {kind: lora, dora: true}\ndistributed: {backend: fsdp}\n",
     "warning", "adapter.dora", "DoRA with sharded parameters", "dora"),
    ("training: {optimizer: adamw_8bit}\ndistributed: {backend: fsdp}\n",
     "warning", "training.optimizer", "8-bit optimizers do not shard", "optimizer"),
    ("distributed: {backend: ddp, num_machines: 2}\n",
     "warning", "distributed.main_address", "several machines but no main_address", "distributed:"),
]


@pytest.mark.parametrize("tail,severity,key,words,line_text", EXISTING, ids=[e[2] + "-" + e[0][:12] for e in EXISTING])
def test_existing_distributed_checks_name_the_key_and_the_line(tmp_path, capsys, tail, severity, key, words, line_text):
    path = write(tmp_path, tail)
    code, err = lint(capsys, path)
    assert code == (2 if severity == "error" else 0), err
    line = line_of(path, line_text)
    hits = [h for h in err.splitlines() if f"{severity}: {key}:" in h and words in h]
    assert hits, err
    assert f"{path.name}:{line}:" in hits[0], (line, err)


def test_qlora_under_fsdp_with_matching_storage_passes(tmp_path, capsys):
    path = write(tmp_path, "adapter: {kind: lora}\nquantization: {bits: 4, quant_storage: bfloat16}\n"
                           "distributed: {backend: fsdp}\n")
    code, err = lint(capsys, path)
    assert code == 0 and "quant_storage" not in err, err


def test_the_same_settings_under_ddp_raise_nothing(tmp_path, capsys):
    path = write(tmp_path, "adapter: {kind: lora, dora: true}\nquantization: {bits: 8}\n"
                           "training: {optimizer: adamw_8bit, gradient_checkpointing: true}\n"
                           "distributed: {backend: ddp, fsdp: {activation_checkpointing: true}}\n")
    code, err = lint(capsys, path)
    assert code == 0, err
    assert "sharded" not in err and "twice" not in err


# --- the checks of runner.plan.launch_settings.check_distributed ---

def findings(tmp_path, tail: str, files: dict | None = None):
    for name, content in (files or {}).items():
        (tmp_path / name).write_text(content)
    path = write(tmp_path, tail)
    loaded = load(path)
    assert schema.validate(loaded.data, loaded.where) == []
    return check_distributed(schema.fill_defaults(loaded.data), loaded.data), path


DS_OWN = json.dumps({"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": "auto",
                     "zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}, indent=2)

PROPOSED = [
    ("single with several processes",
     "distributed: {backend: single, num_processes: 2}\n", None,
     "error", ("distributed", "backend"), "backend single runs one process"),
    ("machine rank out of range",
     "distributed: {backend: ddp, num_machines: 2, main_address: h0, machine_rank: 2}\n", None,
     "error", ("distributed", "machine_rank"), "machine_rank 2 does not exist"),
    ("parameter offload below stage 3",
     "distributed: {backend: deepspeed, deepspeed: {zero_stage: 2, offload_params: cpu}}\n", None,
     "error", ("distributed", "deepspeed", "offload_params"), "needs ZeRO stage 3"),
    ("optimizer offload at stage 0",
     "distributed: {backend: deepspeed, deepspeed: {zero_stage: 0, offload_optimizer: cpu}}\n", None,
     "error", ("distributed", "deepspeed", "offload_optimizer"), "stage 1, 2 or 3"),
    ("nvme without a path",
     "distributed: {backend: deepspeed, deepspeed: {zero_stage: 3, offload_params: nvme}}\n", None,
     "error", ("distributed", "deepspeed", "offload_params"), "NVMe offload needs a folder"),
    ("offloaded optimizer replaces another optimizer",
     "training: {optimizer: lion_8bit}\ndistributed: {backend: deepspeed, deepspeed: {zero_stage: 3, offload_optimizer: cpu}}\n",
     None, "warning", ("training", "optimizer"), "DeepSpeed's own (CPU) AdamW runs; lion_8bit is not used"),
    ("fsdp settings under ddp",
     "distributed: {backend: ddp, fsdp: {cpu_offload: true}}\n", None,
     "warning", ("distributed", "fsdp"), "apply to backend fsdp, but the backend is ddp"),
    ("user json micro batch",
     "training: {micro_batch_size: 2, precision: bf16}\ndistributed: {backend: deepspeed, deepspeed: {config: own.json}}\n",
     {"own.json": DS_OWN},
     "error", ("distributed", "deepspeed", "config"), "own.json sets train_micro_batch_size_per_gpu: 8 but training.micro_batch_size is 2"),
    ("user json precision",
     "training: {micro_batch_size: 8, precision: fp16}\ndistributed: {backend: deepspeed, deepspeed: {config: own.json}}\n",
     {"own.json": DS_OWN},
     "error", ("distributed", "deepspeed", "config"), "own.json enables bf16 but training.precision is fp16"),
    ("user json batch that does not divide",
     "training: {micro_batch_size: 3, gradient_accumulation: 2}\n"
     "distributed: {backend: deepspeed, deepspeed: {config: own.json}}\n",
     {"own.json": json.dumps({"train_batch_size": 16})},
     "error", ("distributed", "deepspeed", "config"), "(6) does not divide"),
    ("user json batch against the world",
     "training: {micro_batch_size: 2, gradient_accumulation: 2}\n"
     "distributed: {backend: deepspeed, num_processes: 2, deepspeed: {config: own.json}}\n",
     {"own.json": json.dumps({"train_batch_size": 16})},
     "error", ("distributed", "deepspeed", "config"), "2 x 2 x 2 = 8"),
    ("user json broken",
     "distributed: {backend: deepspeed, deepspeed: {config: own.json}}\n",
     {"own.json": '{\n  "zero_optimization": {"stage": 3,}\n}'},
     "error", ("distributed", "deepspeed", "config"), "own.json:2:"),
    ("pissa sharded",
     "adapter: {kind: lora, init: pissa_niter_4}\ndistributed: {backend: fsdp}\n", None,
     "warning", ("adapter", "init"), "saved unconverted"),
]


@pytest.mark.parametrize("label,tail,files,severity,path,words", PROPOSED, ids=[p[0] for p in PROPOSED])
def test_proposed_check_finds_it(tmp_path, label, tail, files, severity, path, words):
    found, _ = findings(tmp_path, tail, files)
    hits = [f for f in found if f[0] == severity and f[1] == path and words in f[2]]
    assert hits, found
    assert all(f[3] for f in hits if f[0] == "error"), "every error says what to do"


@pytest.mark.parametrize("tail,files", [
    ("distributed: {backend: deepspeed, deepspeed: {zero_stage: 3, offload_params: cpu, offload_optimizer: cpu}}\n", None),
    ("distributed: {backend: ddp, num_processes: 4, num_machines: 2, main_address: h0, machine_rank: 1}\n", None),
    ("training: {micro_batch_size: 8, precision: bf16}\ndistributed: {backend: deepspeed, deepspeed: {config: own.json}}\n",
     {"own.json": DS_OWN}),
    ("distributed: {backend: fsdp, fsdp: {cpu_offload: true}}\n", None),
])
def test_proposed_checks_pass_good_configs(tmp_path, tail, files):
    found, _ = findings(tmp_path, tail, files)
    assert found == []


def test_zero_stage_comes_from_the_users_file(tmp_path):
    (tmp_path / "own.json").write_text(DS_OWN)
    loaded = load(write(tmp_path, "distributed: {backend: deepspeed, deepspeed: {config: own.json}}\n"))
    cfg = schema.fill_defaults(loaded.data)
    assert cfg["distributed"]["deepspeed"]["zero_stage"] == 2, "the YAML default..."
    assert zero_stage(cfg) == 3, "...is not what runs: the file says stage 3"


@pytest.mark.parametrize("label,tail,files,severity,path,words",
                         [p for p in PROPOSED if p[3] == "error"], ids=[p[0] for p in PROPOSED if p[3] == "error"])
def test_proposed_errors_fail_runner_lint(tmp_path, capsys, label, tail, files, severity, path, words):
    for name, content in (files or {}).items():
        (tmp_path / name).write_text(content)
    cfg = write(tmp_path, tail)
    code, err = lint(capsys, cfg)
    assert code == 2 and ".".join(path) in err and words in err, err
    assert re.search(rf"{cfg.name}:\d+:\d+: error: {re.escape('.'.join(path))}:", err), "file:line of the key"


def test_qlora_under_a_users_zero3_file_is_caught(tmp_path, capsys):
    (tmp_path / "own.json").write_text(DS_OWN)
    path = write(tmp_path, "adapter: {kind: lora}\nquantization: {bits: 4}\n"
                           "training: {micro_batch_size: 8}\ndistributed: {backend: deepspeed, deepspeed: {config: own.json}}\n")
    code, err = lint(capsys, path)
    assert code == 2 and "quant_storage" in err, err
