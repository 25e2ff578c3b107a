"""Kill -9 at many points of a run (between steps, inside a gradient-accumulation window, while a
checkpoint is being written, after the last step), resume with `resume: auto`, and require the
final adapter weights bitwise equal to an uninterrupted run's and the logged per-step losses equal.

Each killed launch is a forked child of the test process (no ~10 s of imports per launch) that
sends itself SIGKILL at a precise point: no cleanup handler, finally block or atexit runs, as with
an OOM killer or a preempted node. The config is chosen so that resume has work to do: LoRA
dropout (RNG), data shuffled anew each epoch (sampler position), gradient accumulation, warmup +
cosine schedule (scheduler state), and several epochs within max_steps."""

import json
import os
import signal
import sys

import pytest
import torch

from runner import rundir
from runner.plan.resolve import make_plan
from runner.train.command import run
from tests.tiny_model import save_tiny_model, write_config

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork

TRAINING = {"max_steps": 10, "micro_batch_size": 2, "gradient_accumulation": 2, "learning_rate": 1e-2,
            "lr_scheduler": "cosine", "warmup_steps": 2}
ADAPTER = {"dropout": 0.1}
OUTPUT = {"save_every": 2, "save_total_limit": 2}

# (name, where, step): where the child kills itself.
#   step:      at the end of optimizer step `step` (before any checkpoint of that step)
#   substep:   after the first micro batch of step `step` (mid accumulation)
#   staged:    checkpoint-`step` fully written, its completeness marker not yet
#   mid_write: checkpoint-`step` half written (model and optimizer, RNG state not yet)
#   renamed:   checkpoint-`step` complete (marker written), before the metrics line of that step
#   end:       after the last step, before the final adapter is saved
ALL_KILLS = [
    ("step1", "step", 1),
    ("step3", "step", 3),
    ("step4", "step", 4),
    ("substep5", "substep", 5),
    ("step7", "step", 7),
    ("staged6", "staged", 6),
    ("mid_write2", "mid_write", 2),
    ("mid_write8", "mid_write", 8),
    ("renamed4", "renamed", 4),
    ("end", "end", 10),
]
FAST_KILLS = ["step3", "substep5", "mid_write8"]


def _die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def killer(where: str, step: int):
    """A TrainerCallback (and, for checkpoint kills, patches inside the child) that SIGKILLs the
    process at the chosen point."""
    from transformers import Trainer, TrainerCallback

    if where == "staged":
        real = rundir.finish_checkpoint

        def finish(checkpoints, at, *rest):
            if at == step:
                _die()
            return real(checkpoints, at, *rest)

        rundir.finish_checkpoint = finish
    if where == "mid_write":
        real_rng = Trainer._save_rng_state

        def save_rng(self, output_dir):
            if self.state.global_step == step:
                assert any(os.scandir(output_dir)), "the checkpoint should be half written here"
                _die()
            return real_rng(self, output_dir)

        Trainer._save_rng_state = save_rng

    class Kill(TrainerCallback):
        micro = 0

        def on_substep_end(self, args, state, control, **kwargs):
            if where == "substep" and state.global_step + 1 == step:
                _die()

        def on_step_end(self, args, state, control, **kwargs):
            if where == "step" and state.global_step == step:
                _die()

        def on_save(self, args, state, control, **kwargs):
            if where == "renamed" and state.global_step == step:
                _die()

        def on_train_end(self, args, state, control, **kwargs):
            if where == "end":
                _die()

    return Kill()


def killed_launch(cfg, where: str, step: int, log) -> None:
    """Run the config in a forked child that kills itself; assert it died of SIGKILL."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            run(make_plan(cfg), callbacks=[killer(where, step)])
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(3)  # reached only if the kill point was never hit
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
        f"child was not killed at {where} {step} (status {status}); log:\n{open(log).read()[-3000:]}"


def train_losses(run_dir) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows if r.get("kind") == "train"]
    assert len(steps) == len(set(steps)), f"duplicated steps in metrics.jsonl: {steps}"
    return {r["step"]: r["loss"] for r in rows if r.get("kind") == "train"}


def adapter_weights(run_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    model_dir = save_tiny_model(root / "model")
    run_dir = run(make_plan(write_config(root / "straight", model_dir, training=TRAINING, adapter=ADAPTER,
                                         extra={"output": OUTPUT})))
    return model_dir, run_dir


def _kill_and_resume(tmp_path, reference, kills):
    model_dir, straight = reference
    expected_w, expected_losses = adapter_weights(straight), train_losses(straight)
    assert sorted(expected_losses) == list(range(1, 11))
    for name, where, step in kills:
        cfg = write_config(tmp_path / name, model_dir, training=TRAINING, adapter=ADAPTER, extra={"output": OUTPUT})
        run_dir = tmp_path / name / "run"
        killed_launch(cfg, where, step, tmp_path / f"{name}.log")
        assert not (run_dir / rundir.RUN_MARKER).exists()
        with open(run_dir / "metrics.jsonl", "a") as fh:  # as if killed halfway through a metrics line
            fh.write('{"step": 99, "kind": "tra')
        for ckpt in rundir.complete_checkpoints(run_dir):  # whatever looks complete really is
            assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "trainer_state.json").is_file()
            assert list(ckpt.glob("rng_state*.pth")) and (ckpt / "optimizer.pt").is_file()
            marker = json.loads((ckpt / rundir.CHECKPOINT_MARKER).read_text())
            assert marker["plan_hash"] == json.loads((run_dir / "plan.json").read_text())["hashes"]["plan"]
        if where in ("staged", "mid_write"):
            assert f"checkpoint-{step}" not in [p.name for p in rundir.complete_checkpoints(run_dir)]

        resumed = run(make_plan(cfg))
        assert (resumed / rundir.RUN_MARKER).is_file(), name
        got = adapter_weights(resumed)
        assert sorted(got) == sorted(expected_w)
        unequal = [k for k in got if not torch.equal(got[k], expected_w[k])]
        assert not unequal, f"{name}: adapter tensors differ from the uninterrupted run: {unequal[:3]}"
        assert train_losses(resumed) == expected_losses, name


def test_kill_minus_nine_then_resume_is_bitwise_exact(tmp_path, reference):
    _kill_and_resume(tmp_path, reference, [k for k in ALL_KILLS if k[0] in FAST_KILLS])


@pytest.mark.slow
def test_kill_minus_nine_at_ten_points_then_resume_is_bitwise_exact(tmp_path, reference):
    assert len(ALL_KILLS) == 10
    _kill_and_resume(tmp_path, reference, ALL_KILLS)
