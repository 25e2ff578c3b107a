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


def lora_config(adapter, target_modules, task_type: str = "CAUSAL_LM"):
    """PEFT's LoraConfig; task_type SEQ_CLS (a reward model) makes PEFT train and save the score head
    with the adapter (its modules_to_save)."""
    from peft import LoraConfig

    return LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=peft_targets(list(target_modules)),
        exclude_modules=peft_targets(list(adapter.exclude_modules)) or None,
        use_dora=adapter.dora,
        use_rslora=adapter.rslora,
        init_lora_weights=peft_init(adapter.init),
        bias=adapter.bias,
        modules_to_save=list(adapter.modules_to_save) or None,
        task_type=task_type,
    )


def apply_adapter(model, adapter, runtime):
    """Wrap or freeze `model` as the plan's adapter section says, on the modules the Runtime names.
    Returns (model, AdapterInfo)."""
    from runner.train.model import is_quantized

    kind = adapter.kind
    if kind != "lora" and is_quantized(model):
        raise UserError(f"{kind} training cannot update 4/8-bit weights", where="adapter.kind",
                        hint="use kind: lora (QLoRA)")
    if kind == "full":
        for param in model.parameters():
            param.requires_grad_(True)
    elif kind == "freeze":
        freeze_all_but(model, runtime.trained_layers, adapter.trainable_modules)
    else:
        if is_quantized(model) and (adapter.init.startswith("pissa") or adapter.init == "olora"):
            raise UserError(
                f"adapter.init: {adapter.init} needs the base weights unquantized (it decomposes them), but "
                "quantization.bits is set", where="adapter.init",
                hint="drop quantization, or use init: default / gaussian with a quantized base",
            )
        model = _lora_model(model, adapter, runtime)
    targets = list(runtime.target_modules)
    if adapter.init_from:  # the existing adapter's own modules
        targets = sorted(model.peft_config["default"].target_modules or [])
    info = AdapterInfo(kind, target_modules=targets)
    info.trainable_params, info.total_params = count_parameters(model)
    if info.trainable_params == 0:
        raise UserError("no parameter is left to train", where="adapter", hint="check trainable_layers / trainable_modules")
    return model, info


def _lora_model(model, adapter, runtime):
    """A new LoRA adapter as the plan says, or (adapter.init_from) an existing one, trainable."""
    if not adapter.init_from:
        from peft import get_peft_model

        task = "SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"
        return get_peft_model(model, lora_config(adapter, runtime.target_modules, task))
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter.init_from, is_trainable=True)
    except (ValueError, KeyError, RuntimeError) as e:  # an adapter made for another architecture or size
        raise UserError(f"adapter.init_from: the adapter in {adapter.init_from} does not fit this model: "
                        f"{str(e).splitlines()[0][:400]}", where="adapter.init_from",
                        hint="set model.path to the base model the adapter was trained on "
                             "(its adapter_config.json names it as base_model_name_or_path)") from None


def freeze_all_but(model, layers, patterns) -> None:
    """Freeze every weight, then unfreeze the decoder blocks named in `layers` and any parameter
    whose name matches a `patterns` regex (runner.train.runtime chose and checked both)."""
    for param in model.parameters():
        param.requires_grad_(False)
    for name in layers:
        for param in model.get_submodule(name).parameters():
            param.requires_grad_(True)
    compiled = [re.compile(p) for p in patterns]
    for name, param in model.named_parameters():
        if any(p.search(name) for p in compiled):
            param.requires_grad_(True)


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


def is_pissa(adapter) -> bool:
    return adapter.kind == "lora" and adapter.init.startswith("pissa")


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
