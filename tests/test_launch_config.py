"""Plan-level tests of the distributed section: the Accelerate settings and DeepSpeed JSON each backend
produces (key by key), the accelerate_config.yaml `runner launch` writes (and that Accelerate's own
parser accepts it), the exact command `runner launch --dry-run` prints, multi-node values from flags,
config and environment, and the launcher/YAML conflict checks. No torch, no process started."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from runner.cli import main
from runner.errors import UserError
from runner.plan.launch_settings import accelerate_file, deepspeed_json
from runner.plan.resolve import make_plan

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "configs"
SAFE = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT", "MACHINE_RANK", "NODE_RANK", "WORLD_SIZE", "RANK",
                 "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU unless a test says so


def write_cfg(tmp_path, distributed: dict, training: dict | None = None, name: str = "dist") -> Path:
    cfg = {
        "name": name,
        "model": {"path": str(FIXTURES / "tiny-model")},
        "datasets": [{"path": str(FIXTURES / "data" / "alpaca_small.json")}],
        "data": {"cache_dir": str(tmp_path / "cache")},
        "output": {"dir": str(tmp_path / "run")},
        "distributed": distributed,
    }
    if training:
        cfg["training"] = training
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def dry_run(capsys, *argv) -> tuple[dict, dict, list[str]]:
    """Run `runner launch --dry-run` in-process; return (files shown, env, argv of the command)."""
    capsys.readouterr()
    assert main(["launch", *map(str, argv), "--dry-run"]) == 0
    out = capsys.readouterr().out
    files, name, lines = {}, None, []
    for line in out.splitlines():
        if line.startswith("# "):
            if name:
                files[name] = "\n".join(lines)
            name, lines = line[2:], []
        else:
            lines.append(line)
    files[name] = "\n".join(lines)
    words = shlex.split(files.pop("command"))
    env = {}
    while words and "=" in words[0] and not words[0].startswith("/"):  # leading NAME=value words
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return files, env, words


COMMON = {"rdzv_backend": "static", "same_network": True}


def test_single_settings(tmp_path):
    plan = make_plan(write_cfg(tmp_path, {"backend": "single"}, {"precision": "fp32"}))
    assert plan.distributed.accelerate == {
        "distributed_type": "NO", "mixed_precision": "no", "num_processes": "deferred", "num_machines": 1,
        "machine_rank": "env", "main_process_ip": None, "main_process_port": None, **COMMON}


def test_auto_backend_is_deferred_to_launch(tmp_path):
    plan = make_plan(write_cfg(tmp_path, {}))
    assert plan.distributed.backend == "auto"
    assert plan.distributed.accelerate["distributed_type"] == "deferred"
    assert "runtime.backend" in plan.deferred


def test_ddp_settings(tmp_path):
    plan = make_plan(write_cfg(tmp_path, {"backend": "ddp", "num_processes": 4, "num_machines": 2,
                                          "machine_rank": 1, "main_address": "10.1.2.3", "main_port": 29611},
                               {"precision": "bf16"}))
    assert plan.distributed.accelerate == {
        "distributed_type": "MULTI_GPU", "mixed_precision": "bf16", "num_processes": 8, "num_machines": 2,
        "machine_rank": 1, "main_process_ip": "10.1.2.3", "main_process_port": 29611, **COMMON}


def test_fsdp_settings_key_by_key(tmp_path):
    plan = make_plan(write_cfg(tmp_path, {"backend": "fsdp", "num_processes": 2, "fsdp": {
        "reshard_after_forward": False, "cpu_offload": True, "state_dict_type": "full",
        "activation_checkpointing": True, "wrap_class": "LlamaDecoderLayer"}}))
    acc = plan.distributed.accelerate
    assert acc["distributed_type"] == "FSDP" and acc["num_processes"] == 2
    assert acc["fsdp_config"] == {
        "fsdp_version": 2,
        "fsdp_reshard_after_forward": False,
        "fsdp_offload_params": True,
        "fsdp_state_dict_type": "FULL_STATE_DICT",
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
        "fsdp_activation_checkpointing": True,
        "fsdp_cpu_ram_efficient_loading": False,
    }
    assert "deepspeed_config" not in acc


def test_fsdp_defaults_defer_the_wrap_class(tmp_path):
    plan = make_plan(write_cfg(tmp_path, {"backend": "fsdp"}))
    fsdp = plan.distributed.accelerate["fsdp_config"]
    assert fsdp["fsdp_reshard_after_forward"] is True
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "deferred"
    assert "runtime.fsdp_wrap_class" in plan.deferred


def zero(stage, **extra):
    base = {"stage": stage, "overlap_comm": stage >= 2, "contiguous_gradients": stage >= 2}
    if stage >= 2:
        base.update(reduce_bucket_size="auto", allgather_bucket_size=500_000_000)
    if stage == 3:
        base.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                    stage3_gather_16bit_weights_on_model_save=True)
    return {**base, **extra}


AUTO_BATCH = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
              "gradient_clipping": "auto", "train_batch_size": "auto"}


@pytest.mark.parametrize("stage,offload,precision,expected_zero,bf16,fp16", [
    (1, {}, "auto", zero(1), "auto", "auto"),
    (2, {}, "bf16", zero(2), True, False),
    (2, {"offload_optimizer": "cpu"}, "fp16", zero(2, offload_optimizer={"device": "cpu", "pin_memory": True}), False, True),
    (3, {}, "fp32", zero(3), False, False),
    (3, {"offload_optimizer": "cpu", "offload_params": "cpu"}, "bf16",
     zero(3, offload_optimizer={"device": "cpu", "pin_memory": True}, offload_param={"device": "cpu", "pin_memory": True}),
     True, False),
])
def test_deepspeed_json_key_by_key(tmp_path, stage, offload, precision, expected_zero, bf16, fp16):
    plan = make_plan(write_cfg(tmp_path, {"backend": "deepspeed", "deepspeed": {"zero_stage": stage, **offload}},
                               {"precision": precision}))
    expected = {**AUTO_BATCH, "bf16": {"enabled": bf16}, "fp16": {"enabled": fp16}, "zero_optimization": expected_zero}
    if "offload_optimizer" in offload:  # DeepSpeed's CPU Adam, its settings filled by the Trainer
        expected["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                             "weight_decay": "auto"}}
    assert plan.distributed.accelerate["deepspeed_config"] == expected
    assert deepspeed_json(plan.config) == expected
    assert plan.distributed.accelerate["distributed_type"] == "DEEPSPEED"


def test_deepspeed_user_file_is_used_as_is(tmp_path):
    (tmp_path / "conf").mkdir()
    own = tmp_path / "conf" / "my_ds.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}))
    cfg = write_cfg(tmp_path, {"backend": "deepspeed", "deepspeed": {"config": "conf/my_ds.json"}})
    plan = make_plan(cfg)
    assert plan.distributed.accelerate["deepspeed_config"] == {"file": str(own)}
    written = accelerate_file(plan.distributed.accelerate, backend="deepspeed", num_processes=2, machine_rank=0,
                              address="127.0.0.1", port=29500, cpu=False, run_dir=tmp_path / "run")
    assert written["deepspeed_config"] == {"deepspeed_config_file": str(own), "zero3_init_flag": False}
    # The file's bytes are part of the config hash: editing it is a different run.
    before = plan.hashes.config
    own.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    assert make_plan(cfg).hashes.config != before


def accelerate_parses(path: Path):
    """What `accelerate launch --config_file path` makes of the file (Accelerate's own parser)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    _, defaults, mixed_precision_from_file = _validate_launch_command(args)
    args.deepspeed_fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_file else [])
    return args


def test_dry_run_cpu_two_processes_uses_torchrun(tmp_path, capsys):
    cfg = write_cfg(tmp_path, {"backend": "ddp", "num_processes": 2}, {"precision": "fp32"})
    files, env, argv = dry_run(capsys, cfg)
    assert argv == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                    "--node_rank=0", "--master_addr=127.0.0.1", "--master_port=29500",
                    "-m", "runner", "train", str(cfg)]
    assert env == SAFE
    acc = yaml.safe_load(files[str(tmp_path / "run" / "accelerate_config.yaml")])
    assert acc == {
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_CPU", "mixed_precision": "no",
        "num_processes": 2, "num_machines": 1, "machine_rank": 0, "main_process_ip": "127.0.0.1",
        "main_process_port": 29500, "rdzv_backend": "static", "same_network": True, "use_cpu": True,
        "gpu_ids": "all", "downcast_bf16": "no", "main_training_function": "main"}
    assert not (tmp_path / "run").exists(), "a dry run writes nothing"


def test_dry_run_one_process_needs_no_launcher(tmp_path, capsys):
    cfg = write_cfg(tmp_path, {})
    _, env, argv = dry_run(capsys, cfg, "training.learning_rate=1e-4")
    assert argv == [sys.executable, "-m", "runner", "train", str(cfg), "training.learning_rate=1e-4"]
    assert env == SAFE


def test_dry_run_gpus_use_accelerate_launch_with_the_written_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    cfg = write_cfg(tmp_path, {"backend": "fsdp"})
    files, env, argv = dry_run(capsys, cfg)
    acc_path = tmp_path / "run" / "accelerate_config.yaml"
    assert argv == [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(acc_path),
                    "-m", "runner", "train", str(cfg)]
    assert env == SAFE
    acc = yaml.safe_load(files[str(acc_path)])
    assert acc["num_processes"] == 4 and acc["distributed_type"] == "FSDP" and acc["mixed_precision"] == "bf16"
    assert "fsdp_transformer_layer_cls_to_wrap" not in acc["fsdp_config"], "deferred values never reach the file"
    copy = tmp_path / "acc.yaml"
    copy.write_text(files[str(acc_path)])
    parsed = accelerate_parses(copy)
    assert parsed.use_fsdp and parsed.num_processes == 4 and parsed.fsdp_version == 2
    assert parsed.fsdp_state_dict_type == "SHARDED_STATE_DICT" and parsed.fsdp_reshard_after_forward in (True, "true")


def test_dry_run_deepspeed_shows_the_json_and_accelerate_reads_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    cfg = write_cfg(tmp_path, {"backend": "deepspeed", "deepspeed": {"zero_stage": 3, "offload_params": "cpu"}})
    files, _, argv = dry_run(capsys, cfg, "--num-processes", "1")
    ds_path = tmp_path / "run" / "deepspeed.json"
    shown = json.loads(files[str(ds_path)])
    assert shown["zero_optimization"]["stage"] == 3
    assert shown["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    acc = yaml.safe_load(files[str(tmp_path / "run" / "accelerate_config.yaml")])
    assert acc["deepspeed_config"] == {"deepspeed_config_file": str(ds_path), "zero3_init_flag": True}
    assert acc["num_processes"] == 1
    # One GPU with DeepSpeed still goes through Accelerate (it sets up the process group).
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    assert argv[-1] == "distributed.num_processes=1", "--num-processes reaches the workers' plan"
    (tmp_path / "acc.yaml").write_text(files[str(tmp_path / "run" / "accelerate_config.yaml")])
    ds_path.parent.mkdir(parents=True)
    ds_path.write_text(files[str(ds_path)])
    parsed = accelerate_parses(tmp_path / "acc.yaml")
    assert parsed.use_deepspeed and parsed.deepspeed_config_file == str(ds_path)
    # What each worker's DeepSpeedPlugin checks: no accelerate-config field that the JSON owns
    # (mixed_precision beside a deepspeed_config_file stopped both ranks on 2 H200s).
    from accelerate.utils import DeepSpeedPlugin

    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", ",".join(parsed.deepspeed_fields).lower())
    DeepSpeedPlugin._deepspeed_config_checks(None)


def test_multi_node_rank_address_and_port(tmp_path, capsys, monkeypatch):
    cfg = write_cfg(tmp_path, {"backend": "ddp", "num_processes": 1, "num_machines": 2})
    monkeypatch.setenv("MASTER_ADDR", "10.9.8.7")
    monkeypatch.setenv("MASTER_PORT", "29777")
    monkeypatch.setenv("NODE_RANK", "1")
    files, _, argv = dry_run(capsys, cfg, "--cpu")
    assert argv[3:8] == ["--nproc_per_node=1", "--nnodes=2", "--node_rank=1", "--master_addr=10.9.8.7",
                         "--master_port=29777"]
    acc = yaml.safe_load(files[str(tmp_path / "run" / "accelerate_config.yaml")])
    assert (acc["num_processes"], acc["num_machines"], acc["machine_rank"]) == (2, 2, 1)
    monkeypatch.setenv("MACHINE_RANK", "0")  # Accelerate's name wins over torch's
    assert dry_run(capsys, cfg, "--cpu")[2][5] == "--node_rank=0"
    assert dry_run(capsys, cfg, "--cpu", "--machine-rank", "1")[2][5] == "--node_rank=1"  # the flag wins


def test_multi_node_config_values_win_over_environment(tmp_path, capsys, monkeypatch):
    cfg = write_cfg(tmp_path, {"backend": "ddp", "num_processes": 2, "num_machines": 3, "machine_rank": 2,
                               "main_address": "node0.cluster", "main_port": 29123})
    monkeypatch.setenv("MASTER_ADDR", "10.9.8.7")
    monkeypatch.setenv("MASTER_PORT", "29777")
    monkeypatch.setenv("NODE_RANK", "1")
    _, _, argv = dry_run(capsys, cfg, "--cpu")
    assert argv[3:8] == ["--nproc_per_node=2", "--nnodes=3", "--node_rank=2", "--master_addr=node0.cluster",
                         "--master_port=29123"]


def test_multi_node_without_an_address_is_an_error(tmp_path, capsys):
    cfg = write_cfg(tmp_path, {"backend": "ddp", "num_processes": 1, "num_machines": 2})
    assert main(["launch", str(cfg), "--cpu", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "distributed.main_address" in err and "MASTER_ADDR" in err


def test_machine_rank_out_of_range_is_an_error(tmp_path, capsys):
    cfg = write_cfg(tmp_path, {"backend": "ddp", "num_processes": 1, "num_machines": 2, "main_address": "h0"})
    assert main(["launch", str(cfg), "--cpu", "--machine-rank", "2", "--dry-run"]) == 2
    assert "machine rank 2 is outside 0..1" in capsys.readouterr().err


def test_single_backend_with_several_processes_is_an_error(tmp_path, capsys):
    cfg = write_cfg(tmp_path, {"backend": "single"})
    assert main(["launch", str(cfg), "--cpu", "--num-processes", "2", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "distributed.backend" in err and ("backend single runs one process" in err or "backend is single" in err), err


def test_bad_machine_rank_env_is_an_error_not_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NODE_RANK", "one")
    assert main(["launch", str(write_cfg(tmp_path, {})), "--dry-run"]) == 2
    assert "NODE_RANK='one' is not a whole number" in capsys.readouterr().err


# --- the launcher/YAML conflict check that workers run (runner.train.distributed.check_launcher) ---

@pytest.mark.parametrize("env,backend,key", [
    ({"ACCELERATE_USE_FSDP": "true"}, "ddp", "fsdp"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "fsdp", "deepspeed"),
    ({"ACCELERATE_USE_FSDP": "true"}, "auto", "fsdp"),
])
def test_launcher_flags_that_contradict_the_yaml_name_both(tmp_path, monkeypatch, env, backend, key):
    from runner.train.distributed import check_launcher

    plan = make_plan(write_cfg(tmp_path, {"backend": backend}))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserError) as err:
        check_launcher(plan)
    assert err.value.where == "distributed.backend"
    assert f"--use_{key}" in err.value.message and repr(backend) in err.value.message


def test_launcher_that_matches_the_yaml_passes(tmp_path, monkeypatch):
    from runner.train.distributed import check_launcher

    plan = make_plan(write_cfg(tmp_path, {"backend": "fsdp", "num_processes": 2}, {"precision": "bf16"}))
    for k, v in {"ACCELERATE_USE_FSDP": "true", "ACCELERATE_MIXED_PRECISION": "bf16", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    check_launcher(plan)


@pytest.mark.parametrize("env,where,words", [
    ({"ACCELERATE_MIXED_PRECISION": "fp16"}, "training.precision", "fp16"),
    ({"WORLD_SIZE": "3"}, "distributed.num_processes", "3 processes"),
])
def test_launcher_precision_or_world_size_conflicts(tmp_path, monkeypatch, env, where, words):
    from runner.train.distributed import check_launcher

    plan = make_plan(write_cfg(tmp_path, {"backend": "ddp", "num_processes": 2}, {"precision": "bf16"}))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserError) as err:
        check_launcher(plan)
    assert err.value.where == where and words in err.value.message


def test_single_backend_under_a_multi_process_launcher_is_refused(tmp_path, monkeypatch):
    from runner.train.distributed import check_launcher

    plan = make_plan(write_cfg(tmp_path, {"backend": "single"}))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="'single'"):
        check_launcher(plan)


def test_trainer_kwargs_per_backend(tmp_path):
    from situations import env, gpu, runtime

    from runner.train.arguments import backend_arguments

    fsdp = make_plan(write_cfg(tmp_path, {"backend": "fsdp", "fsdp": {"reshard_after_forward": False}}, name="f"))
    kw = backend_arguments(fsdp, runtime(fsdp, env(world_size=2)))
    assert kw == {"ddp_backend": "gloo", "ddp_find_unused_parameters": False, "fsdp": True, "fsdp_config": {
        "version": 2, "reshard_after_forward": False, "cpu_offload": False, "state_dict_type": "SHARDED_STATE_DICT",
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "activation_checkpointing": False,
        "cpu_ram_efficient_loading": False, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}}
    ds = make_plan(write_cfg(tmp_path, {"backend": "deepspeed", "deepspeed": {"zero_stage": 3}}, name="d"))
    kw = backend_arguments(ds, runtime(ds, gpu(world_size=2)))
    assert kw["deepspeed"]["zero_optimization"]["stage"] == 3 and "ddp_backend" not in kw
    single = make_plan(write_cfg(tmp_path, {}, name="s"))
    assert backend_arguments(single, runtime(single, gpu())) == {}


def test_trainer_kwargs_build_real_training_arguments(tmp_path):
    """transformers turns them into the FSDP2 plugin settings we meant (no deprecated string form)."""
    from transformers import TrainingArguments

    from situations import env, runtime

    from runner.train.arguments import backend_arguments

    plan = make_plan(write_cfg(tmp_path, {"backend": "fsdp", "fsdp": {"cpu_offload": True, "state_dict_type": "full",
                                                                      "activation_checkpointing": True}}))
    kwargs = backend_arguments(plan, runtime(plan, env(world_size=2)))
    assert kwargs.pop("ddp_backend") == "gloo"  # never given to one process (no process group)
    try:
        args = TrainingArguments(output_dir=str(tmp_path / "o"), report_to="none", use_cpu=True, **kwargs)
        plugin_args = args.fsdp_plugin_args
    finally:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)  # leave no process-wide Accelerate state to later tests
    assert args.fsdp is True
    assert plugin_args == {
        "fsdp_version": 2, "cpu_offload": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_cls_names_to_wrap": "LlamaDecoderLayer", "cpu_ram_efficient_loading": False,
        "state_dict_type": "FULL_STATE_DICT", "activation_checkpointing": True, "reshard_after_forward": True}


def test_decoder_layer_class_of_a_peft_wrapped_model():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    from runner.train.runtime import decoder_layer_class

    torch.set_num_threads(1)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = AutoModelForCausalLM.from_config(cfg)
    assert decoder_layer_class(model) == "Qwen2DecoderLayer"
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"]))
    assert decoder_layer_class(peft) == "Qwen2DecoderLayer"
    model._no_split_modules = None  # no declaration: the repeated layer of the longest ModuleList
    assert decoder_layer_class(model) == "Qwen2DecoderLayer"


def test_nvme_offload_with_a_path_reaches_the_deepspeed_json(tmp_path):
    from runner.plan.launch_settings import deepspeed_json
    from runner.config.schema import fill_defaults

    cfg = fill_defaults({"model": {"path": "x/y"}, "datasets": [{"path": "d.json"}],
                         "distributed": {"backend": "deepspeed", "deepspeed": {
                             "zero_stage": 3, "offload_params": "nvme", "nvme_path": "/nvme/ds"}}})
    zero = deepspeed_json(cfg)["zero_optimization"]
    assert zero["offload_param"] == {"device": "nvme", "pin_memory": True, "nvme_path": "/nvme/ds"}
