"""Rows split over processes: `distributed.context_parallel` (torch's ring attention under FSDP2) and
`distributed.sequence_parallel` (DeepSpeed Ulysses / ALST), both carried out through Accelerate's
ParallelismConfig (runner.plan.parallelism).

Tested here: every refusal (exit 2 from `runner lint`, naming the key and its line), the shapes that
are accepted, what `runner plan` shows, the launch-time decisions (attention, the chunked loss, the
data-parallel size that sets the effective batch and the step count, the world and head counts that
must divide), the collator's row padding, and the ParallelismConfig that reaches real TrainingArguments.

Not tested here: a context-parallel training step. torch's context parallelism dispatches only the
CUDA SDPA kernels (flash, memory-efficient, cuDNN) to its ring attention; on a CPU, SDPA runs
`_scaled_dot_product_flash_attention_for_cpu`, which it does not handle, so a gloo process group cannot
run a split step. The loss equality with the unsplit run is bench/multigpu.py's parity check of
cp_short against cp_short_ref, on GPUs. DeepSpeed is not installed on the development machines, so neither is a Ulysses step."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.cli import main
from runner.errors import UserError
from runner.plan.parallelism import data_parallel_size, parallelism_settings, row_multiple
from runner.plan.resolve import make_plan

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "configs"
CP_OK = ("distributed: {backend: fsdp, context_parallel: 2}\nsequence: {max_length: 64}\n")
SP_OK = ("distributed: {backend: deepspeed, sequence_parallel: 2}\nsequence: {max_length: 64}\n")


def write(tmp_path, text: str, name: str = "cfg.yaml") -> Path:
    head = (f"model: {{path: {FIXTURES / 'tiny-model'}}}\n"
            f"datasets: [{{path: {FIXTURES / 'data' / 'alpaca_small.json'}}}]\n"
            f"data: {{cache_dir: {tmp_path / 'cache'}}}\n"
            f"output: {{dir: {tmp_path / 'out'}}}\n")
    path = tmp_path / name
    path.write_text(head + text)
    return path


def lint(capsys, path) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["lint", str(path)])
    return code, capsys.readouterr().err


REFUSED = [
    # (config tail, key named, words, text of the line named)
    ("distributed: {backend: ddp, context_parallel: 2}\n", "distributed.context_parallel",
     "runs only with backend fsdp", "context_parallel"),
    ("distributed: {backend: auto, context_parallel: 2}\n", "distributed.context_parallel",
     "runs only with backend fsdp", "context_parallel"),
    ("distributed: {backend: deepspeed, context_parallel: 2}\n", "distributed.context_parallel",
     "the backend is deepspeed", "context_parallel"),
    ("distributed: {backend: fsdp, context_parallel: 2, sequence_parallel: 2}\n", "distributed.context_parallel",
     "both split rows", "context_parallel"),
    ("model: {path: X, attn_implementation: varlen}\n" + CP_OK, "model.attn_implementation",
     "needs sdpa attention, not varlen", "attn_implementation"),
    ("model: {path: X, attn_implementation: flash_attention_2}\n" + CP_OK, "model.attn_implementation",
     "not flash_attention_2", "attn_implementation"),
    ("model: {path: X, attn_implementation: eager}\n" + CP_OK, "model.attn_implementation", "not eager",
     "attn_implementation"),
    ("distributed: {backend: fsdp, context_parallel: 2}\nsequence: {max_length: 64, packing: true}\n",
     "sequence.packing", "causal over the whole row", "packing"),
    ("distributed: {backend: fsdp, context_parallel: 4}\nsequence: {max_length: 100}\n",
     "sequence.max_length", "100 is not divisible by 8 (2 x context_parallel)", "max_length"),
    ("distributed: {backend: fsdp, context_parallel: 4, num_processes: 6}\nsequence: {max_length: 64}\n",
     "distributed.num_processes", "context_parallel: 4 does not divide the 6 processes", "num_processes"),
    ("distributed: {backend: fsdp, context_parallel: 4, num_processes: 3, num_machines: 2, main_address: 10.0.0.1}\n"
     "sequence: {max_length: 64}\n", "distributed.num_processes", "does not divide the 6 processes (3 x 2 machines)",
     "num_processes"),
    (CP_OK + "training: {stage: dpo}\n", "training.stage", "stage dpo scores whole sequences", "stage"),
    (SP_OK.replace("deepspeed", "fsdp"), "distributed.sequence_parallel", "runs only with backend deepspeed",
     "sequence_parallel"),
    ("model: {path: X, attn_implementation: flex_attention}\n" + SP_OK, "model.attn_implementation",
     "needs sdpa or flash_attention_2 attention, not flex_attention", "attn_implementation"),
    ("model: {path: X, attn_implementation: varlen}\n" + SP_OK, "model.attn_implementation", "not varlen",
     "attn_implementation"),
    ("distributed: {backend: deepspeed, sequence_parallel: 2}\nsequence: {max_length: 64, packing: true}\n",
     "sequence.packing", "with sdpa a packed row attends as one sample", "packing"),
    ("distributed: {backend: deepspeed, sequence_parallel: 4}\nsequence: {max_length: 66}\n",
     "sequence.max_length", "66 is not divisible by 4 (sequence_parallel)", "max_length"),
    ("distributed: {backend: deepspeed, sequence_parallel: 4, num_processes: 2}\nsequence: {max_length: 64}\n",
     "distributed.num_processes", "sequence_parallel: 4 does not divide the 2 processes", "num_processes"),
    (SP_OK + "training: {stage: kto}\n", "training.stage", "stage kto", "stage"),
]


def _model_first(tail: str) -> str:
    """A tail that names the model replaces the head's model line (the fixture's path kept)."""
    return tail.replace("model: {path: X, ", f"model: {{path: {FIXTURES / 'tiny-model'}, ")


@pytest.mark.parametrize("tail,key,words,line_text", REFUSED, ids=[f"{r[1]}-{i}" for i, r in enumerate(REFUSED)])
def test_each_refusal_names_the_key_its_line_and_the_reason(tmp_path, capsys, tail, key, words, line_text):
    tail = _model_first(tail)
    if tail.startswith("model:"):
        path = tmp_path / "cfg.yaml"
        path.write_text(tail.split("\n", 1)[0] + "\n" + f"datasets: [{{path: {FIXTURES / 'data' / 'alpaca_small.json'}}}]\n"
                        + f"data: {{cache_dir: {tmp_path / 'cache'}}}\n" + tail.split("\n", 1)[1]
                        + ("training: {stage: kto}\n" if "stage: kto" in tail else ""))
    else:
        path = write(tmp_path, tail)
    code, err = lint(capsys, path)
    assert code == 2, err
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if line_text in text)
    hits = [h for h in err.splitlines() if f"error: {key}:" in h and words in h]
    assert hits, err
    assert f"{path.name}:{line}:" in hits[0], (line, err)


@pytest.mark.parametrize("tail", [
    CP_OK,
    "model: {path: X, attn_implementation: sdpa}\n" + CP_OK,
    "distributed: {backend: fsdp, context_parallel: 8, num_processes: 8}\nsequence: {max_length: 131072}\n",
    "distributed: {backend: fsdp, context_parallel: 2, num_processes: 4, num_machines: 2}\nsequence: {max_length: 64}\n"
    "training: {stage: pt}\n",
    SP_OK,
    "model: {path: X, attn_implementation: flash_attention_2}\n"
    "distributed: {backend: deepspeed, sequence_parallel: 2}\nsequence: {max_length: 64, packing: true}\n",
    "distributed: {backend: fsdp, context_parallel: 1}\nsequence: {max_length: 100, packing: true}\n",
], ids=["cp", "cp-sdpa", "cp8-128k", "cp-two-machines-pt", "sp", "sp-flash-packed", "cp-off"])
def test_accepted_shapes_lint_clean(tmp_path, capsys, tail):
    tail = _model_first(tail)
    if tail.startswith("model:"):
        first, rest = tail.split("\n", 1)
        path = tmp_path / "cfg.yaml"
        path.write_text(first + "\n" + f"datasets: [{{path: {FIXTURES / 'data' / 'alpaca_small.json'}}}]\n"
                        + f"data: {{cache_dir: {tmp_path / 'cache'}}}\n" + rest)
    else:
        path = write(tmp_path, tail)
    code, err = lint(capsys, path)
    assert code == 0, err
    assert "context_parallel" not in err and "sequence_parallel" not in err, err


def test_evaluation_is_warned_about_it_does_not_split(tmp_path, capsys):
    path = write(tmp_path, CP_OK + "val_size: 2\ntraining: {eval_every: 5}\n")
    code, err = lint(capsys, path)
    assert code == 0, err
    assert "warning: distributed.context_parallel: evaluation does not split rows" in err


def test_the_plan_carries_the_parallelism_config_and_the_data_parallel_batch(tmp_path):
    plan = make_plan(write(tmp_path, "distributed: {backend: fsdp, context_parallel: 4, num_processes: 8}\n"
                                     "sequence: {max_length: 64}\n"
                                     "training: {micro_batch_size: 2, gradient_accumulation: 3}\n"))
    assert plan.distributed.context_parallel == 4 and plan.distributed.sequence_parallel == 1
    assert plan.distributed.parallelism == {"dp_replicate_size": 1, "dp_shard_size": 2, "cp_size": 4,
                                            "cp_backend": "torch", "cp_handler": {"cp_comm_strategy": "allgather"}}
    # 8 processes, 4 to a row: 2 read different batches.
    assert plan.training.effective_batch_size == 2 * 3 * 2
    # Accelerate's launcher must not get it (its --use_parallelism_config refuses DeepSpeed): the Trainer does.
    assert "parallelism_config" not in plan.distributed.accelerate
    unsplit = make_plan(write(tmp_path, "distributed: {backend: fsdp, num_processes: 8}\n", name="u.yaml"))
    assert unsplit.distributed.parallelism is None and unsplit.training.effective_batch_size == 8 * 8


def test_sequence_parallel_settings_and_the_world_deferred(tmp_path):
    plan = make_plan(write(tmp_path, SP_OK))
    assert plan.distributed.parallelism == {
        "dp_replicate_size": 1, "dp_shard_size": "deferred", "sp_size": 2, "sp_backend": "deepspeed",
        "sp_handler": {"sp_seq_length_is_variable": True, "sp_attn_implementation": "deferred"}}
    assert plan.training.effective_batch_size is None


def test_runner_plan_shows_it(tmp_path, capsys):
    path = write(tmp_path, "distributed: {backend: fsdp, context_parallel: 2, num_processes: 4}\n"
                           "sequence: {max_length: 64}\n")
    capsys.readouterr()
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "context_parallel = 2" in out
    assert "parallelism.cp_size = 2" in out and "parallelism.dp_shard_size = 2" in out


def test_plan_json_of_an_earlier_runner_reads_as_no_split(tmp_path):
    import json

    from runner.plan.plan import Plan

    data = json.loads(make_plan(write(tmp_path, "distributed: {backend: fsdp}\n")).to_json())
    for key in ("context_parallel", "sequence_parallel", "parallelism"):
        del data["distributed"][key]
    plan = Plan.from_dict(data, earlier=True)
    assert plan.distributed.context_parallel is None and plan.distributed.parallelism is None
    assert row_multiple(plan.distributed) is None


def test_pure_helpers():
    assert data_parallel_size(8, {"context_parallel": 4, "sequence_parallel": 1}) == 2
    assert data_parallel_size(8, {"context_parallel": 1, "sequence_parallel": 8}) == 1
    assert data_parallel_size(8, {"context_parallel": 1, "sequence_parallel": 1}) == 8
    assert row_multiple({"context_parallel": 4, "sequence_parallel": 1}) == 8
    assert row_multiple({"context_parallel": 1, "sequence_parallel": 4}) == 4
    assert parallelism_settings({"context_parallel": 1, "sequence_parallel": 1}, 8) is None
    sp = parallelism_settings({"context_parallel": 1, "sequence_parallel": 4}, 8, "flash_attention_2")
    assert sp["dp_shard_size"] == 2 and sp["sp_handler"]["sp_attn_implementation"] == "flash_attention_2"


# --- at launch ---

def test_launch_decisions_under_context_parallelism(tmp_path):
    from situations import gpu, runtime

    plan = make_plan(write(tmp_path, CP_OK + "training: {micro_batch_size: 2, gradient_accumulation: 1, epochs: 1}\n"))
    rt = runtime(plan, gpu(world_size=4, visible_gpus=4), train_rows=64)
    assert rt.attn_implementation == "sdpa" and "context / sequence parallelism" in rt.attn_implementation_auto
    assert rt.backend == "fsdp"
    # 4 processes, 2 to a row: 2 data-parallel readers of 2 rows a step.
    assert rt.effective_batch_size == 4
    assert rt.total_steps == 64 // 4
    unsplit = make_plan(write(tmp_path, "distributed: {backend: fsdp}\nsequence: {max_length: 64}\n"
                                        "training: {micro_batch_size: 2, gradient_accumulation: 1, epochs: 1}\n",
                              name="u.yaml"))
    assert runtime(unsplit, gpu(world_size=4, visible_gpus=4), train_rows=64).total_steps == 64 // 8


def test_chunked_loss_is_off_when_rows_are_split(tmp_path):
    from situations import gpu, runtime

    # ZeRO-2 keeps parameters whole, so only the split turns the chunked loss off.
    plan = make_plan(write(tmp_path, SP_OK))
    rt = runtime(plan, gpu(world_size=2, visible_gpus=2))
    assert not rt.fast_path.chunked_loss and "rows split over processes" in rt.fast_path.chunked_loss_off_because
    ddp = make_plan(write(tmp_path, "distributed: {backend: deepspeed}\n", name="d.yaml"))
    assert runtime(ddp, gpu(world_size=2, visible_gpus=2)).fast_path.chunked_loss


@pytest.mark.parametrize("tail,world,model,words", [
    (CP_OK, 3, {}, "distributed.context_parallel: 2 does not divide the 3 processes"),
    (SP_OK.replace("sequence_parallel: 2", "sequence_parallel: 4"), 4, {"num_attention_heads": 6},
     "distributed.sequence_parallel: 4 does not divide the 6 attention heads"),
    (SP_OK, 1, {}, "distributed.sequence_parallel: 2 does not divide the 1 processes"),
])
def test_a_launch_that_cannot_split_is_refused_before_loading(tmp_path, tail, world, model, words):
    from situations import facts, gpu, runtime

    plan = make_plan(write(tmp_path, tail))
    with pytest.raises(UserError) as err:
        runtime(plan, gpu(world_size=world, visible_gpus=world), facts(**model))
    assert words in str(err.value) and err.value.where.startswith("distributed.")
    assert not err.value.message.startswith("distributed."), "the key is said once, as where"


def test_the_real_model_facts_hold_the_head_count(tmp_path):
    from runner.train.runtime import model_facts

    assert model_facts(make_plan(write(tmp_path, SP_OK))).num_attention_heads == 4  # tiny-model's config


def test_the_collator_pads_rows_to_equal_pieces(tmp_path):
    from transformers import AutoTokenizer

    from runner.data.collate import make_collator

    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "tiny-model")
    rows = [{"input_ids": [5] * 11, "labels": [5] * 11}, {"input_ids": [6] * 3, "labels": [6] * 3}]
    cp = make_collator(make_plan(write(tmp_path, "distributed: {backend: fsdp, context_parallel: 3}\n"
                                                 "sequence: {max_length: 66}\n")), tokenizer)
    batch = cp(rows)
    assert batch["input_ids"].shape == (2, 12)  # 11 up to a multiple of 2 x 3
    assert batch["labels"][0, 11] == -100 and batch["attention_mask"][0].sum() == 11
    sp = make_collator(make_plan(write(tmp_path, SP_OK.replace("sequence_parallel: 2", "sequence_parallel: 4"),
                                       name="s.yaml")), tokenizer)
    batch = sp(rows)
    assert batch["input_ids"].shape == (2, 12)
    assert batch["position_ids"][1].tolist() == list(range(12)), "Ulysses shards rows by their position ids"
    assert "position_ids" not in cp(rows)
    plain = make_collator(make_plan(write(tmp_path, "distributed: {backend: fsdp}\n", name="p.yaml")), tokenizer)
    assert plain(rows)["input_ids"].shape == (2, 11)


def test_the_trainer_gets_accelerates_parallelism_config(tmp_path):
    """What reaches TrainingArguments: a real ParallelismConfig whose sizes multiply to the world size."""
    from accelerate.parallelism_config import ParallelismConfig
    from transformers import TrainingArguments

    from situations import gpu, runtime

    from runner.train.arguments import backend_arguments

    plan = make_plan(write(tmp_path, "distributed: {backend: fsdp, context_parallel: 4}\nsequence: {max_length: 64}\n"))
    kwargs = backend_arguments(plan, runtime(plan, gpu(world_size=8, visible_gpus=8)))
    config = kwargs["parallelism_config"]
    assert isinstance(config, ParallelismConfig)
    assert (config.dp_replicate_size, config.dp_shard_size, config.cp_size, config.sp_size) == (1, 2, 4, 1)
    assert config.total_size == 8 and config.cp_handler.cp_comm_strategy == "allgather"
    assert config.dp_shard_cp_dim_names == ["dp_shard", "cp"]  # FSDP shards over the data and context ranks
    try:
        args = TrainingArguments(output_dir=str(tmp_path / "o"), report_to="none", use_cpu=True,
                                 **{k: v for k, v in kwargs.items() if k != "ddp_backend"})
        assert args.parallelism_config is config
    finally:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
    unsplit = make_plan(write(tmp_path, "distributed: {backend: fsdp}\n", name="u.yaml"))
    assert "parallelism_config" not in backend_arguments(unsplit, runtime(unsplit, gpu(world_size=8, visible_gpus=8)))


def test_sequence_parallel_config_names_the_attention_the_launch_chose(tmp_path):
    from situations import gpu, runtime

    from runner.train.arguments import parallelism_config

    plan = make_plan(write(tmp_path, SP_OK))
    config = parallelism_config(plan, runtime(plan, gpu(world_size=4, visible_gpus=4)))
    assert (config.sp_size, config.sp_backend, config.dp_shard_size, config.total_size) == (2, "deepspeed", 2, 4)
    assert config.sp_handler.sp_attn_implementation == "sdpa" and config.sp_handler.sp_seq_length_is_variable


def test_runner_launch_shows_the_split_for_its_world_and_refuses_one_that_does_not_divide(tmp_path, capsys):
    path = write(tmp_path, "distributed: {backend: fsdp, context_parallel: 2}\nsequence: {max_length: 64}\n")
    capsys.readouterr()
    assert main(["launch", str(path), "--cpu", "--num-processes", "4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    shown = out.split("# parallelism_config", 1)[1].split("# command", 1)[0]
    assert "cp_size: 2" in shown and "dp_shard_size: 2" in shown and "dp_replicate_size: 1" in shown
    # --num-processes is distributed.num_processes: the plan refuses it.
    assert main(["launch", str(path), "--cpu", "--num-processes", "3", "--dry-run"]) == 2
    assert "context_parallel: 2 does not divide the 3 processes (3 x 1 machines)" in capsys.readouterr().err
    # One process per visible device (none here: one on the CPU): the launch refuses it.
    assert main(["launch", str(path), "--cpu", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "distributed.context_parallel: error: 2 does not divide the 1 processes of this launch" in err
    assert not (tmp_path / "out").exists(), "nothing is written when the launch is refused"


def test_a_run_planned_before_these_keys_is_the_same_run_and_a_split_is_another(tmp_path):
    from runner.rundir.judge import plan_differences

    path = write(tmp_path, "distributed: {backend: fsdp}\nsequence: {max_length: 64}\n")
    new = make_plan(path).to_dict()
    dist = {k: v for k, v in new["config"]["distributed"].items() if k not in ("context_parallel", "sequence_parallel")}
    stored = {**new, "config": {**new["config"], "distributed": dist}}
    assert plan_differences(stored, new) == []
    split = make_plan(path, ["distributed.context_parallel=2"])
    assert plan_differences(stored, split.to_dict()) == ["distributed.context_parallel: '<unset>' -> 2"]
    assert split.hashes.config != make_plan(path).hashes.config
