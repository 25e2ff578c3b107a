"""How the weights train: a PEFT LoRA-family adapter, all weights (full), or chosen layers only
(freeze). Also the LoRA+ parameter groups and the PiSSA save conversion."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

from runner.errors import UserError

PISSA_INIT_DIR = "pissa_init"


@dataclass
class AdapterInfo:
    kind: str
    target_modules: list[str] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0

    def summary(self) -> str:
        share = 100.0 * self.trainable_params / max(self.total_params, 1)
        return f"trainable params: {self.trainable_params:,} / total {self.total_params:,} ({share:.4f}%)"


def linear_module_names(model) -> list[str]:
    """Short names (q_proj, up_proj, ...) of every linear layer except the output head: what
    `all-linear` means, made concrete so that plan.json records what was trained."""
    import torch

    head = model.get_output_embeddings()
    names = set()
    for name, module in model.named_modules():
        # bitsandbytes' Linear4bit / Linear8bitLt subclass nn.Linear.
        if isinstance(module, torch.nn.Linear) and module is not head:
            names.add(name.split(".")[-1])
    return sorted(names)


def resolve_target_modules(model, adapter: dict) -> list[str]:
    target = adapter.get("target_modules", "all-linear")
    names = linear_module_names(model) if target == "all-linear" else list(target)
    excluded = set(adapter.get("exclude_modules") or [])
    names = [n for n in names if n not in excluded]  # PEFT applies regex excludes itself
    if not names:
        raise UserError("no module left to adapt", where="adapter.target_modules", hint="check exclude_modules")
    return names


REGEX_CHARS = re.compile(r"[\\^$.*+?()\[\]{}|]")


def peft_targets(names: list[str]):
    """PEFT reads a list as module-name suffixes and a string as one full-match regex: plain names
    stay a list; when some entry is a regex, all become one pattern (plain names as suffixes)."""
    if not any(REGEX_CHARS.search(n) for n in names):
        return list(names)
    parts = [n if REGEX_CHARS.search(n) else rf"(?:.*\.)?{re.escape(n)}" for n in names]
    return "|".join(f"(?:{p})" for p in parts)


def peft_init(init: str):
    """adapter.init -> LoraConfig.init_lora_weights."""
    return True if init == "default" else init


def lora_config(adapter: dict, target_modules: list[str]):
    from peft import LoraConfig

    return LoraConfig(
        r=int(adapter.get("r", 16)),
        lora_alpha=adapter.get("alpha") or 2 * int(adapter.get("r", 16)),
        lora_dropout=float(adapter.get("dropout", 0.0)),
        target_modules=peft_targets(target_modules),
        exclude_modules=peft_targets(list(adapter.get("exclude_modules") or [])) or None,
        use_dora=bool(adapter.get("dora", False)),
        use_rslora=bool(adapter.get("rslora", False)),
        init_lora_weights=peft_init(adapter.get("init", "default")),
        bias=adapter.get("bias", "none"),
        modules_to_save=list(adapter.get("modules_to_save") or []) or None,
        task_type="CAUSAL_LM",
    )


def apply_adapter(model, plan):
    """Wrap or freeze `model` as plan.adapter says. Returns (model, AdapterInfo)."""
    from runner.model import is_quantized

    adapter = plan.adapter
    kind = adapter.get("kind", "lora")
    if kind in ("full", "none"):
        if is_quantized(model):
            raise UserError(
                "full fine-tuning cannot update 4/8-bit weights", where="adapter.kind", hint="use kind: lora (QLoRA)"
            )
        for param in model.parameters():
            param.requires_grad_(True)
        info = AdapterInfo("full")
    elif kind == "freeze":
        if is_quantized(model):
            raise UserError("freeze training cannot update 4/8-bit weights", where="adapter.kind", hint="use kind: lora")
        info = AdapterInfo("freeze", target_modules=freeze_all_but(model, adapter))
    elif kind == "lora":
        init = adapter.get("init", "default")
        if is_quantized(model) and (init.startswith("pissa") or init == "olora"):
            raise UserError(
                f"adapter.init: {init} needs the base weights unquantized (it decomposes them), but quantization.bits is set",
                where="adapter.init",
                hint="drop quantization, or use init: default / gaussian with a quantized base",
            )
        from peft import get_peft_model

        targets = resolve_target_modules(model, adapter)
        model = get_peft_model(model, lora_config(adapter, targets))
        info = AdapterInfo("lora", target_modules=targets)
    else:
        raise UserError(f"unknown adapter kind {kind!r}", where="adapter.kind")
    info.trainable_params, info.total_params = count_parameters(model)
    if info.trainable_params == 0:
        raise UserError("no parameter is left to train", where="adapter", hint="check trainable_layers / trainable_modules")
    return model, info


def decoder_layers(model):
    """The ModuleList of transformer blocks (model.model.layers for Llama-likes)."""
    import torch

    best = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and re.search(r"(^|\.)(layers|h|blocks)$", name):
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise UserError("cannot find the decoder layers of this model", where="adapter.trainable_layers",
                        hint="name the modules to train with adapter.trainable_modules instead")
    return best


def freeze_all_but(model, adapter: dict) -> list[str]:
    """Freeze every weight, then unfreeze the last `trainable_layers` blocks and any parameter
    whose name matches a `trainable_modules` regex. Returns the trained name prefixes."""
    for param in model.parameters():
        param.requires_grad_(False)
    trained = []
    n_last = adapter.get("trainable_layers")
    if n_last:
        name, layers = decoder_layers(model)
        first = max(len(layers) - int(n_last), 0)
        for index in range(first, len(layers)):
            for param in layers[index].parameters():
                param.requires_grad_(True)
            trained.append(f"{name}.{index}")
    patterns = [re.compile(p) for p in adapter.get("trainable_modules") or []]
    for pattern in patterns:
        hits = [n for n, p in model.named_parameters() if pattern.search(n)]
        if not hits:
            raise UserError(f"adapter.trainable_modules pattern {pattern.pattern!r} matches no parameter",
                            where="adapter.trainable_modules",
                            hint=f"parameter names look like {next(iter(dict(model.named_parameters())))!r}")
        for n, p in model.named_parameters():
            if pattern.search(n):
                p.requires_grad_(True)
        trained.append(pattern.pattern)
    if not trained:
        raise UserError("adapter.kind freeze needs trainable_layers or trainable_modules", where="adapter")
    return trained


def count_parameters(model) -> tuple[int, int]:
    trainable = total = 0
    for param in model.parameters():
        # 4-bit weights are packed two per byte.
        n = param.numel() * (2 if param.__class__.__name__ == "Params4bit" else 1)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def print_parameters(info: AdapterInfo) -> None:
    print(info.summary(), file=sys.stderr)


def loraplus_param_groups(model, *, lr: float, ratio: float, lr_embedding: float, weight_decay: float) -> list[dict]:
    """LoRA+ (B matrices learn `ratio` times faster than A). Plain parameter groups for any torch
    optimizer, so it works through a Trainer subclass where `optimizers=` is refused (FSDP)."""
    groups = {"A": [], "A_no_decay": [], "B": [], "B_no_decay": [], "embedding": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or "bias" in name or "norm" in name
        if "lora_embedding_" in name:
            groups["embedding"].append(param)
        elif "lora_B" in name or param.ndim == 1:
            groups["B_no_decay" if no_decay else "B"].append(param)
        else:
            groups["A_no_decay" if no_decay else "A"].append(param)
    spec = {
        "A": (lr, weight_decay),
        "A_no_decay": (lr, 0.0),
        "B": (lr * ratio, weight_decay),
        "B_no_decay": (lr * ratio, 0.0),
        "embedding": (lr_embedding, weight_decay),
    }
    return [
        {"params": params, "lr": spec[key][0], "weight_decay": spec[key][1], "name": f"loraplus_{key}"}
        for key, params in groups.items()
        if params
    ]


def is_pissa(adapter: dict) -> bool:
    return adapter.get("kind") == "lora" and str(adapter.get("init", "")).startswith("pissa")


def save_pissa_initial(model, directory: str) -> None:
    """PiSSA moves the principal components out of the base weights into the adapter. Saving the
    adapter as it is before training lets the final save convert it to a plain LoRA delta
    against the original base (PEFT's path_initial_model_for_weight_conversion)."""
    config = model.peft_config["default"]
    original = config.init_lora_weights
    config.init_lora_weights = True  # so the saved copy loads as an ordinary adapter
    try:
        model.save_pretrained(directory, selected_adapters=["default"])
    finally:
        config.init_lora_weights = original


def save_adapter(model, directory: str, *, pissa_initial: str | None = None, embeddings_resized: bool = False) -> None:
    """The adapter, with the full embedding layers too where PEFT's "auto" would save them: when the
    vocabulary grew (runner knows; PEFT would look for the base's config.json, which a GGUF base has
    not, and warn) or when the adapter targets them."""
    kwargs = {"selected_adapters": ["default"],
              "save_embedding_layers": embeddings_resized or embeddings_adapted(model)}
    if pissa_initial:
        kwargs["path_initial_model_for_weight_conversion"] = pissa_initial
    model.save_pretrained(directory, **kwargs)


def embeddings_adapted(model) -> bool:
    """Whether an adapter layer wraps the input embeddings or the output head."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.constants import EMBEDDING_LAYER_NAMES

    return any(isinstance(module, BaseTunerLayer) and name.split(".")[-1] in EMBEDDING_LAYER_NAMES
               for name, module in model.named_modules())
