"""Load the base model the Plan names: local directory, hub id or GGUF file, in the resolved dtype,
optionally quantized with bitsandbytes (QLoRA). Heavy imports stay inside the functions so that
importing this module is cheap."""
from __future__ import annotations

import importlib.util
import os
import sys

from runner.errors import UserError

DTYPE_NAMES = ("bfloat16", "float16", "float32")


def device_type() -> str:
    """The accelerator this process runs on: cuda, xpu, mps or cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def local_device() -> str:
    """The device string of this process (cuda:LOCAL_RANK under a launcher)."""
    kind = device_type()
    if kind in ("cuda", "xpu"):
        return f"{kind}:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return kind


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def attn_for_transformers(name: str, for_training: bool) -> str:
    """The attn_implementation name transformers gets: varlen is registered under runner's own key
    for training; a model loaded for generation or as a frozen reference uses sdpa."""
    if name == "auto" or (name == "varlen" and not for_training):
        return "sdpa"
    if name != "varlen":
        return name
    from runner.train.fast import varlen

    return varlen.register()


def _source_kwargs(plan) -> dict:
    """Where the model's files come from: revision, GGUF file, hub token, remote code."""
    model = plan.model
    kwargs = {"trust_remote_code": model.trust_remote_code}
    if model.gguf_file:
        kwargs["gguf_file"] = model.gguf_file
    if model.revision:
        kwargs["revision"] = model.revision
    if plan.secret("model.token"):
        kwargs["token"] = plan.secret("model.token")
    return kwargs


def load_config(plan):
    """The model's transformers config (no weights read)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(plan.model.path, **_source_kwargs(plan))
    except (OSError, ValueError) as exc:
        raise _load_error(plan, exc) from exc
    apply_rope(plan, config)
    return config


def apply_rope(plan, config) -> None:
    """model.rope_scaling and model.max_position written into the config the model is built from
    (runner.plan.rope says what they become; config.json's own checks ran at plan time)."""
    from runner.plan import rope

    model = plan.model
    if model.rope_scaling is None and model.max_position is None:
        return
    text = config.get_text_config()
    current = getattr(text, "rope_parameters", None) or {}
    nested = text.nested_rope_parameter_keys(current) if hasattr(text, "nested_rope_parameter_keys") else []
    where = "model.rope_scaling"
    if model.rope_scaling is not None and (not current or nested):
        why = f"sets RoPE per layer type ({', '.join(nested)})" if nested else "has no rotary position embeddings"
        raise UserError(f"the model ({text.model_type}) {why}: model.rope_scaling cannot apply", where=where,
                        hint="remove model.rope_scaling")
    params, new_max = rope.updated(model.rope_scaling, model.max_position, text.max_position_embeddings, current)
    if params is not None:
        text.rope_parameters = params
    text.max_position_embeddings = new_max
    try:
        text.validate_rope()
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"transformers refuses the RoPE settings {params}: {exc}", where=where) from exc


def check_rope(plan, model) -> None:
    """The model's code must read rope_parameters: some architectures (GPT-J, CodeGen, ...) compute
    their rotary embedding themselves and would silently train unscaled."""
    wanted = plan.model.rope_scaling
    if wanted is None:
        return
    seen = {str(getattr(m, "rope_type")) for m in model.modules() if isinstance(getattr(m, "rope_type", None), str)}
    if wanted["type"] not in seen:
        raise UserError(f"the {type(model).__name__} code does not use transformers' RoPE scaling (its rotary "
                        f"embedding runs {', '.join(sorted(seen)) or 'its own computation'}): rope_scaling "
                        f"{wanted['type']} would be ignored", where="model.rope_scaling",
                        hint="remove model.rope_scaling; this architecture cannot be stretched this way")


def bnb_config(quantization, dtype: str):
    """A BitsAndBytesConfig for plan.quantization (None when the base stays unquantized)."""
    if not quantization.bits:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            "quantization.bits is set but bitsandbytes is not installed",
            where="quantization.bits",
            hint="pip install 'runner[qlora]'",
        )
    from transformers import BitsAndBytesConfig

    if quantization.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = dtype if quantization.compute_dtype == "auto" else quantization.compute_dtype
    storage = quantization.quant_storage
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.quant_type,
        bnb_4bit_use_double_quant=quantization.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(compute),
        bnb_4bit_quant_storage=torch_dtype(storage) if storage != "uint8" else None,
    )


def _load_error(plan, exc: Exception) -> UserError:
    """OSError: files missing or unreachable; ValueError: transformers refused (remote code, ...)."""
    model = plan.model
    if isinstance(exc, ValueError):
        from runner.plan.remote_code import load_error

        found = load_error(model.path, exc)
        if found is None:
            raise exc
        return found
    if model.source == "local" and os.path.isdir(model.path):
        return UserError(f"cannot load model from {model.path}: {exc}", where="model.path")
    name = model.path
    offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True")
    why = "the hub is offline (HF_HUB_OFFLINE)" if offline else "it is not in the local cache and the hub is unreachable"
    return UserError(
        f"cannot load model {name!r}: {why} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
        where="model.path",
        hint=(
            f"download it once where there is network (`hf download {name} --local-dir models/{name.split('/')[-1]}`), "
            f"copy the folder here and set `model.path: models/{name.split('/')[-1]}` (a local directory), "
            "or check the spelling of the hub id"
        ),
    )


def load_model(plan, *, dtype: str, attn_implementation: str, quantize: bool = True, for_training: bool = True,
               gradient_checkpointing: bool = False, device_map=None, auto_class: str = "AutoModelForCausalLM"):
    """plan.model in `dtype` with the given attention (runner.train.runtime decides both). With
    `quantize` and plan.quantization set, the base is loaded in 4/8-bit and prepared for k-bit
    training. `auto_class`: the stage's (a reward model loads as a one-label sequence classifier); a
    causal LM that is a supported vision-language model loads with AutoModelForImageTextToText."""
    import transformers

    if plan.model.trust_remote_code:
        print(f"warning: trust_remote_code is on: Python code shipped with {plan.model.path} will run", file=sys.stderr)
    kwargs = {"dtype": torch_dtype(dtype), "attn_implementation": attn_for_transformers(attn_implementation, for_training),
              **_source_kwargs(plan)}
    if auto_class == "AutoModelForSequenceClassification":
        kwargs["num_labels"] = 1  # one scalar reward per sequence
    quant = bnb_config(plan.quantization, dtype) if quantize else None
    auto = model_class(plan) if auto_class == "AutoModelForCausalLM" else getattr(transformers, auto_class)
    if quant is not None and auto.__name__ == "AutoModelForImageTextToText":
        from runner.train.vision import quantization_skips

        quant.llm_int8_skip_modules = quantization_skips()  # the vision side stays in plan dtype
    if quant is not None:
        kwargs["quantization_config"] = quant
        # bitsandbytes places weights at load time; each process takes its own device.
        kwargs["device_map"] = device_map or {"": local_device()}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    try:
        if plan.model.random_init:
            model = _random_model(plan, kwargs, auto)
        else:
            if plan.model.rope_scaling is not None or plan.model.max_position is not None:
                kwargs["config"] = load_config(plan)
                if "num_labels" in kwargs:  # from_pretrained ignores it once a config is given
                    kwargs["config"].num_labels = kwargs.pop("num_labels")
            model = auto.from_pretrained(plan.model.path, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(plan, exc) from exc
    drop_gguf_quantizer(model)
    if for_training:
        # The KV cache is for generation; in training it also stops transformers from reading
        # packed position_ids as sample boundaries.
        model.config.use_cache = False
        if quant is not None:
            prepare_quantized(model, dtype, gradient_checkpointing)
    else:
        model.config.use_cache = True
        model.eval()
    return model


def model_class(plan):
    """The transformers Auto class for plan.model: AutoModelForImageTextToText for a supported
    vision-language model, AutoModelForCausalLM otherwise."""
    from runner.train.vision import auto_class

    return auto_class(load_config(plan))


def prepare_quantized(model, dtype: str, checkpointing: bool) -> None:
    """A k-bit base made ready for adapter training. In fp16/fp32, PEFT's preparation (norms,
    embeddings and LM head upcast to fp32: fp16 overflows there). In bf16 the upcast buys nothing
    bf16 LoRA does not already have, and costs memory (Llama-3-8B: ~4 GiB of fp32 embeddings and head,
    and fp32 logits): the base is only frozen; the Trainer turns on checkpointing."""
    if dtype != "bfloat16":
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
        return
    for param in model.parameters():
        param.requires_grad_(False)


def _random_model(plan, kwargs: dict, auto):
    """model.random_init: the architecture of config.json with seeded random weights, built on the
    local device (an 8B model initialises in seconds on a GPU, minutes on a CPU). A quantized base
    is saved once in plan dtype under the cache and loaded back through bitsandbytes."""
    import torch

    config = load_config(plan)
    if "num_labels" in kwargs:
        config.num_labels = kwargs.pop("num_labels")
    torch.manual_seed(plan.training.seed)
    quant = kwargs.pop("quantization_config", None)
    device_map = kwargs.pop("device_map", None)
    device = local_device() if (quant is not None or device_type() == "cuda") else "cpu"
    with torch.device(device):
        model = auto.from_config(config, dtype=kwargs["dtype"], attn_implementation=kwargs["attn_implementation"],
                                 trust_remote_code=kwargs["trust_remote_code"])
    if quant is None:
        return model
    from pathlib import Path

    head = "" if auto.__name__ == "AutoModelForCausalLM" else f"-{auto.__name__}"  # another head, another file
    staged = Path(plan.data.cache_dir) / "random-init" / f"{plan.hashes.model or 'model'}-{plan.training.seed}{head}"
    if not (staged / "config.json").is_file():
        tmp = staged.with_name(staged.name + ".tmp")
        model.save_pretrained(tmp)
        tmp.rename(staged)
    del model
    if device_type() == "cuda":
        torch.cuda.empty_cache()
    return auto.from_pretrained(staged, quantization_config=quant, device_map=device_map, **kwargs)


def drop_gguf_quantizer(model) -> None:
    """A GGUF file is dequantized on load, but transformers keeps a GGUF quantizer and a
    quantization_config on the model; saving it then writes a config that claims GGUF weights,
    which other tools misread. The weights are plain tensors: forget the GGUF origin."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is not None and str(getattr(method, "value", method)) == "gguf":
        quantizer.remove_quantization_config(model)  # hf_quantizer, config.quantization_config, is_quantized
        for module in model.modules():
            config = getattr(module, "config", None)
            if getattr(config, "_is_quantized", False):
                config._is_quantized = False


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
