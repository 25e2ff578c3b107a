"""Training a vision-language model: which class loads it, and what trains.

LoRA adapts the language model's linear layers by default; the vision encoder (tower) and the
projector that feeds its features to the language model are frozen, adapted with LoRA or fully
trained as `vision.tower` / `vision.projector` say. A quantized (QLoRA) base keeps the vision side
in plan dtype: 4-bit vision encoders lose too much, and the side is small."""

from __future__ import annotations

from runner.data.vlm import PROJECTOR_NAMES, TOWER_NAMES, family_of
from runner.errors import UserError


def auto_class(config):
    """AutoModelForImageTextToText for a supported vision-language config, else AutoModelForCausalLM
    (an unsupported vision-language family is refused by family_of)."""
    import transformers

    if family_of(config) is not None:
        return transformers.AutoModelForImageTextToText
    return transformers.AutoModelForCausalLM


def part_of(name: str) -> str:
    """'projector', 'tower' or 'language' for a module or parameter name."""
    dotted = f".{name}."
    if any(f".{p}." in dotted for p in PROJECTOR_NAMES):
        return "projector"
    if any(f".{t}." in dotted for t in TOWER_NAMES):
        return "tower"
    return "language"


def quantization_skips() -> list[str]:
    """Modules bitsandbytes leaves unquantized in a vision-language model."""
    return [*TOWER_NAMES, *(p.split(".")[-1] for p in PROJECTOR_NAMES), "lm_head"]


def check(plan) -> None:
    vision = plan.data.vision
    if vision is None:
        return
    for key in ("tower", "projector"):
        if getattr(vision, key) == "lora" and plan.adapter.kind != "lora":
            raise UserError(f"vision.{key}: lora needs adapter.kind: lora (it is {plan.adapter.kind})",
                            where=f"vision.{key}", hint="use frozen or full")


def lora_targets(model, vision, names) -> list[str]:
    """Full names of the linear layers LoRA adapts: the language model's whose last name is in
    `names` (runtime.target_modules), and every linear layer of a part set to lora."""
    import torch

    lora_parts = {p for p in ("tower", "projector") if getattr(vision, p) == "lora"}
    wanted = set(names)
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        part = part_of(name)
        if (part == "language" and name.split(".")[-1] in wanted) or part in lora_parts:
            out.append(name)
    return out


def fully_trained(model, vision) -> list[str]:
    """The modules PEFT keeps whole (modules_to_save: trained and saved) for the parts set to full:
    the largest modules whose parameters all belong to such a part (Qwen's projector sits inside
    its vision tower, so a full tower there is its blocks and patch embedding, not the merger)."""
    wanted = {p for p in ("tower", "projector") if getattr(vision, p) == "full"}
    if not wanted:
        return []
    parts: dict[str, set] = {}
    for name, _ in model.named_parameters():
        part, pieces = part_of(name), name.split(".")
        for i in range(len(pieces)):
            parts.setdefault(".".join(pieces[:i]), set()).add(part)
    import torch

    modules = dict(model.named_modules())
    containers = (torch.nn.ModuleList, torch.nn.ModuleDict)  # PEFT cannot wrap these: their items instead
    tops = []
    for name, found in parts.items():
        parent = name.rpartition(".")[0] if "." in name else ""
        if not name or len(found) != 1 or not found <= wanted:
            continue
        if parts.get(parent) != found or isinstance(modules.get(parent), containers):
            if not isinstance(modules.get(name), containers):
                tops.append(name)
    return sorted(tops)


def apply_adapter(model, plan, runtime):
    """runner.train.adapters.apply_adapter for a vision-language model."""
    from runner.train import adapters

    vision, adapter = plan.data.vision, plan.adapter
    if adapter.kind == "lora":
        from peft import get_peft_model

        config = adapters.lora_config(adapter, ["placeholder"])
        config.target_modules = set(lora_targets(model, vision, runtime.target_modules))
        if not config.target_modules:
            raise UserError("no linear layer of the language model matches adapter.target_modules",
                            where="adapter.target_modules")
        saved = fully_trained(model, vision)
        config.modules_to_save = (list(config.modules_to_save or []) + saved) or None
        model = get_peft_model(model, config)
        info = adapters.AdapterInfo("lora", target_modules=list(runtime.target_modules))
        info.trainable_params, info.total_params = adapters.count_parameters(model)
        return model, info
    model, info = adapters.apply_adapter(model, adapter, runtime)
    frozen = {p for p in ("tower", "projector") if getattr(vision, p) == "frozen"}
    for name, param in model.named_parameters():
        if part_of(name) in frozen:
            param.requires_grad_(False)
    info.trainable_params, info.total_params = adapters.count_parameters(model)
    return model, info
