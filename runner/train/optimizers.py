"""The optimizers beyond transformers' plain names: the Trainer arguments that carry GaLore and
APOLLO (transformers builds those itself, from galore-torch and apollo-torch), and Muon, which
transformers does not offer: torch.optim.Muon on the decoder's 2-D weights, AdamW on the rest, as
one optimizer the Trainer, its scheduler, checkpoints and runner's non-finite guard see whole."""

from __future__ import annotations

import functools

from runner.config.optimizer_checks import layerwise, low_rank


def trainer_arguments(plan, runtime) -> dict:
    """TrainingArguments entries for plan.training.optimizer (merged over the common ones)."""
    t = plan.training
    name = t.optimizer
    if name == "muon":
        # RunnerMixin.create_optimizer builds it (TrainerOptions.optimizer); the name is unused then
        return {"optim": "adamw_torch"}
    if not low_rank(name):
        return {}
    lr = t.low_rank
    args = {"rank": lr.rank, "update_proj_gap": lr.update_proj_gap, "proj_type": lr.proj_type}
    if lr.scale is not None:
        args["scale"] = lr.scale
    if name.startswith("apollo_"):
        args.update(proj=lr.apollo_proj, scale_type=lr.apollo_scale_type)
    out = {"optim": name, "optim_target_modules": list(runtime.optimizer_modules),
           "optim_args": ",".join(f"{k}={v}" for k, v in args.items())}
    if layerwise(name):
        # Each parameter is stepped as soon as its gradient exists: there is no whole gradient to clip.
        out["max_grad_norm"] = 0.0
    return out


def muon_factory(plan, runtime):
    """model -> the Muon + AdamW optimizer, or None when the optimizer is another."""
    if plan.training.optimizer != "muon":
        return None
    t = plan.training
    stack = runtime.optimizer_modules[0]

    def build(model, lr: float):
        hidden, rest = [], []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            inside = name.startswith(stack + ".") or f".{stack}." in f".{name}"
            (hidden if inside and param.ndim == 2 else rest).append(param)
        m = t.muon
        return muon_class()(hidden, rest, lr=lr, weight_decay=t.weight_decay, betas=(t.adam_beta1, t.adam_beta2),
                             eps=t.adam_epsilon, momentum=m.momentum, nesterov=m.nesterov, ns_steps=m.ns_steps,
                             adjust_lr_fn=m.adjust_lr)

    return build


def muon_class():
    """The MuonWithAdamW class (defined on first use: importing this module imports no torch)."""
    return _define()


@functools.cache
def _define():
    import collections

    import torch

    class MuonWithAdamW(torch.optim.Optimizer):
        """torch.optim.Muon over `hidden` (2-D weights of the decoder layers) and AdamW over `rest`.
        Its param_groups are the two optimizers' own group dicts, so the scheduler's rate reaches
        both; state_dict holds both states. A parameter without a gradient is left alone by both,
        which is how runner's guard skips a non-finite step (runner.train.nonfinite)."""

        def __init__(self, hidden, rest, *, lr, weight_decay, betas, eps, momentum, nesterov, ns_steps,
                     adjust_lr_fn):
            self.muon = torch.optim.Muon(hidden, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                         nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn) \
                if hidden else None
            self.adamw = torch.optim.AdamW(rest, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay) \
                if rest else None
            parts = [o for o in (self.muon, self.adamw) if o is not None]
            super().__init__([g for o in parts for g in o.param_groups], {})
            self.state = collections.ChainMap(*(o.state for o in parts))

        @torch.no_grad()
        def step(self, closure=None):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for part in (self.muon, self.adamw):
                if part is not None:
                    part.step()
            return loss

        def state_dict(self):
            return {"muon": self.muon.state_dict() if self.muon else None,
                    "adamw": self.adamw.state_dict() if self.adamw else None}

        def load_state_dict(self, state_dict):
            for key in ("muon", "adamw"):
                part = getattr(self, key)
                if part is not None and state_dict.get(key) is not None:
                    part.load_state_dict(state_dict[key])

    return MuonWithAdamW
