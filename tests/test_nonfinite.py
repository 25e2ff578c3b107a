"""Non-finite steps under the fused optimizer, without a sync per step (runner.train.nonfinite): a NaN
gradient leaves parameters, Adam moments and the step count untouched; the count is read at logging /
saving / the end, and a run past training.max_nonfinite stops naming the step. Real torch fused AdamW
on CPU and real training of a tiny Llama."""

from __future__ import annotations

import math

import pytest
import torch

from runner.errors import UserError
from runner.train.nonfinite import NonFiniteGuard, supports
from runner.plan.resolve import make_plan
from runner.train.command import run
from tests.tiny_model import poison_from, save_tiny_model, write_config

torch.set_num_threads(1)


def _opt(dtype=torch.float32):
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3).to(dtype)
    return layer, torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True)


def _step(layer, opt, x):
    opt.zero_grad(set_to_none=True)
    layer(x.to(layer.weight.dtype)).pow(2).sum().backward()
    opt.step()


def test_supports_only_fused_adam():
    layer = torch.nn.Linear(2, 2)
    assert supports(torch.optim.AdamW(layer.parameters(), fused=True))
    assert not supports(torch.optim.AdamW(layer.parameters()))
    assert not supports(torch.optim.SGD(layer.parameters(), lr=0.1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16: full fine-tuning of bf16 weights
def test_nan_gradient_skips_the_update_on_device_and_check_names_the_step(dtype):
    layer, opt = _opt(dtype)
    guard = NonFiniteGuard(opt, max_nonfinite=1)
    _step(layer, opt, torch.ones(2, 4))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in opt.state.values()]
    _step(layer, opt, torch.tensor([[1.0, float("nan"), 0.0, 0.0]] * 2))  # step 2: NaN gradients
    after = layer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(m, s["exp_avg"]) for m, s in zip(moments, opt.state.values()))
    assert all(int(s["step"]) == 1 for s in opt.state.values())
    assert not hasattr(opt, "found_inf")
    _step(layer, opt, torch.ones(2, 4))  # step 3 trains again
    assert not torch.equal(before["weight"], layer.weight)
    guard.check(global_step=3)  # one skip, allowed: a warning
    _step(layer, opt, torch.full((2, 4), float("inf")))  # step 4
    with pytest.raises(UserError, match=r"non-finite loss or gradients at step 4 \(2 so far; training.max_nonfinite is 1\)"):
        guard.check(global_step=4)


def test_non_finite_loss_sets_the_flag_and_reports_zero():
    layer, opt = _opt()
    guard = NonFiniteGuard(opt, max_nonfinite=0)
    assert guard.after_micro_step(torch.tensor(2.5)).item() == 2.5
    assert guard.found.item() == 0.0
    assert guard.after_micro_step(torch.tensor(float("nan"))).item() == 0.0
    assert guard.found.item() == 1.0


def _ddp_rank(rank: int, port: int, out_dir: str) -> None:
    """One DDP rank of two (gloo): step 1 finite everywhere; step 2 an infinite loss on rank 1 only,
    with finite gradients (so the averaged gradients stay finite); step 3 finite again."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    guard = NonFiniteGuard(opt, max_nonfinite=5)
    weights = []
    for step in (1, 2, 3):
        opt.zero_grad(set_to_none=True)
        loss = model(torch.full((2, 4), float(rank + step))).pow(2).mean()
        if step == 2 and rank == 1:
            loss = loss + torch.tensor(float("inf"))  # d(inf constant)/dw = 0: the gradient stays finite
        loss.backward()
        guard.after_micro_step(loss)
        opt.step()
        weights.append(model.module.weight.detach().clone())
    torch.save({"weights": weights, "count": int(guard.count), "steps": [int(s["step"]) for s in opt.state.values()]},
               f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_under_ddp_a_non_finite_loss_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for a, b in zip(r0["weights"], r1["weights"]):
        assert torch.equal(a, b), "the replicas parted"
    assert torch.equal(r0["weights"][0], r0["weights"][1]), "step 2 was skipped on rank 0 too"
    assert not torch.equal(r0["weights"][1], r0["weights"][2]), "step 3 trained"
    assert r0["count"] == r1["count"] == 1 and r0["steps"] == r1["steps"] == [2, 2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden=48)


def _train(tmp_path, model_dir, callbacks=(), **training):
    training = {"max_steps": 4, "micro_batch_size": 8, "optimizer": "adamw_torch_fused", **training}
    return run(make_plan(write_config(tmp_path, model_dir, adapter={"kind": "full"}, training=training)),
               callbacks=list(callbacks))


def test_training_stops_past_max_nonfinite_and_skips_up_to_it(tmp_path, model_dir):
    with pytest.raises(UserError, match=r"non-finite loss or gradients at step \d \(\d so far; training.max_nonfinite is 0\)"):
        _train(tmp_path / "a", model_dir, callbacks=[poison_from(2)])
    assert not (tmp_path / "a" / "run" / "RUN_COMPLETE").exists()
    run_dir = _train(tmp_path / "b", model_dir, callbacks=[poison_from(2)], max_nonfinite=4)
    assert (run_dir / "RUN_COMPLETE").is_file()


def test_finite_training_takes_the_guard_and_learns(tmp_path, model_dir):
    from tests.tiny_model import train_losses

    from transformers import TrainerCallback

    seen = {}

    class Hooks(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            inner = getattr(optimizer, "optimizer", optimizer)
            seen["fused"] = supports(inner)
            seen["hooks"] = len(inner._optimizer_step_pre_hooks), len(inner._optimizer_step_post_hooks)

    run_dir = _train(tmp_path, model_dir, callbacks=[Hooks()], max_steps=12, learning_rate=1e-2)
    assert seen == {"fused": True, "hooks": (1, 1)}
    losses = train_losses(run_dir)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
