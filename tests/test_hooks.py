"""Every private member runner reaches into (runner.train.hooks.HOOKS) still exists in the installed
library with the parameters runner relies on. An upgrade that renames or reshapes one fails here,
naming the member, where runner uses it and why, instead of a run that silently does something else."""

from __future__ import annotations

import importlib
import inspect

import pytest

from runner.train.hooks import HOOKS


def _resolve(dotted: str):
    module, _, rest = dotted.partition(".")
    obj = importlib.import_module(module)
    for part in rest.split(".") if rest else []:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(f"{obj.__name__}.{part}")
    return obj


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: f"{h.owner}.{h.member}")
def test_pinned_member_is_still_there(hook):
    if hook.owner.startswith("liger_kernel"):
        pytest.importorskip("liger_kernel", reason="Liger is a GPU extra; its hook is checked where it is installed")
    owner = _resolve(hook.owner)
    if hook.member == "_shared_state":
        member = owner._shared_state
        assert isinstance(member, dict), f"{hook.owner}.{hook.member} is no longer a dict ({hook.used_in}: {hook.why})"
        return
    if hook.params is None:
        # An attribute that instances carry: check it on an instance where the class does not define it.
        where = owner if hasattr(owner, hook.member) else None
        if where is None and hook.owner == "transformers.TrainingArguments":
            args = owner(output_dir="unused", report_to="none", use_cpu=True)
            where = args if hasattr(args, hook.member) else None
        if where is None and hook.owner == "torch.optim.AdamW":
            import torch

            where = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], fused=True)
            where = where if hasattr(where, hook.member) else None
        assert where is not None, f"{hook.owner}.{hook.member} is gone ({hook.used_in}: {hook.why})"
        return
    member = getattr(owner, hook.member, None)
    assert member is not None, f"{hook.owner}.{hook.member} is gone ({hook.used_in}: {hook.why})"
    if not callable(member):
        return
    try:
        params = tuple(inspect.signature(member).parameters)
    except (TypeError, ValueError):  # a C function without a signature: its presence is what can be checked
        return
    assert params[: len(hook.params)] == hook.params, (
        f"{hook.owner}.{hook.member} now takes {params}, runner calls it as {hook.params} "
        f"({hook.used_in}: {hook.why})")


def test_the_hook_list_names_real_files():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for hook in HOOKS:
        assert (repo / hook.used_in.split(" ")[0]).is_file(), hook.used_in
