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
    """The accelerator this process trains on: cuda, xpu, mps or cpu."""
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


def bf16_supported() -> bool:
    import torch

    kind = device_type()
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    if kind == "xpu":
        return True
    # bf16 runs on CPU but far slower than fp32 there; "supported" means "a good idea" here.
    return False


def resolve_dtype(name: str) -> str:
    """`auto` becomes bfloat16 where the device handles it well, else float32."""
    if name == "auto":
        return "bfloat16" if bf16_supported() else "float32"
    if name not in DTYPE_NAMES:
        raise UserError(f"unknown dtype {name!r}", where="model.dtype", hint=f"use one of auto, {', '.join(DTYPE_NAMES)}")
    return name


def resolve_precision(precision: str, dtype: str) -> str:
    """Mixed-precision mode of the Trainer: bf16 / fp16 / fp32."""
    if precision == "auto":
        return "bf16" if dtype == "bfloat16" or bf16_supported() else ("fp16" if dtype == "float16" else "fp32")
    return precision


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def check_attn_implementation(name: str) -> None:
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise UserError(
            "model.attn_implementation is flash_attention_2 but the flash-attn package is not installed",
            where="model.attn_implementation",
            hint="install it (`pip install 'runner[flash]'`, needs a CUDA toolchain) or use `sdpa` (the default)",
        )
    if name == "flash_attention_2" and device_type() != "cuda":
        raise UserError(
            "flash_attention_2 needs a CUDA GPU", where="model.attn_implementation", hint="use `sdpa` on this machine"
        )
    if name == "varlen":
        from runner import varlen

        if varlen.missing():
            raise UserError(f"model.attn_implementation is varlen, but {varlen.missing()}",
                            where="model.attn_implementation", hint="upgrade torch or use `sdpa`")


def attn_for_transformers(name: str, for_training: bool) -> str:
    """The attn_implementation name transformers gets: varlen is registered under runner's own key
    for training; a model loaded for generation or as a frozen reference uses sdpa."""
    if name != "varlen":
        return name
    if not for_training:
        return "sdpa"
    from runner import varlen

    return varlen.register()


def auto_attention(model, device: str, training: dict) -> tuple[str, str | None]:
    """What `model.attn_implementation: auto` trains with: ("varlen", None), or ("sdpa", why not).
    On the H100 varlen won wherever rows hold many samples or padding (bench/RESULTS.md); on rows of
    one long document it is no faster (qlora8b). sdpa is the fallback wherever varlen cannot run."""
    from runner import varlen

    if device != "cuda":
        return "sdpa", f"the device is {device} (varlen's kernel is CUDA-only)"
    if varlen.missing():
        return "sdpa", varlen.missing()
    if training.get("torch_compile"):
        return "sdpa", "training.torch_compile is on (varlen stays outside the compiled graphs, breaking each layer's)"
    if not getattr(model, "_supports_attention_backend", False):
        return "sdpa", f"{type(model).__name__} does not use transformers' attention interface"
    reason = varlen.unsupported(model.config)
    if reason:
        return "sdpa", reason
    return "varlen", None


def training_attention(plan, model) -> tuple[str, str | None]:
    """The attention a model from load_model(for_training=True) trains with, and under auto why it
    is not varlen. auto loads the model with sdpa; here it is decided on the loaded model's config
    and the model switched to varlen where that can run."""
    requested = plan.model.get("attn_implementation") or "auto"
    if requested != "auto":
        return requested, None
    name, why = auto_attention(model, device_type(), plan.training)
    if name == "varlen":
        model.set_attn_implementation(attn_for_transformers(name, for_training=True))
    return name, why


def check_varlen_model(model) -> None:
    """model.attn_implementation: varlen on a model whose attention it cannot run: a clear error."""
    from runner import varlen

    reason = varlen.unsupported(model.config)
    if reason:
        raise UserError(f"model.attn_implementation is varlen, but {model.config.model_type!r} cannot use it: {reason}",
                        where="model.attn_implementation", hint="use `sdpa` (or `flex_attention`) for this model")


def bnb_config(quantization: dict | None, dtype: str):
    """A BitsAndBytesConfig for plan.quantization (None when the base stays unquantized)."""
    if not quantization or not quantization.get("bits"):
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            "quantization.bits is set but bitsandbytes is not installed",
            where="quantization.bits",
            hint="pip install 'runner[qlora]'",
        )
    from transformers import BitsAndBytesConfig

    if quantization["bits"] == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = quantization.get("compute_dtype", "auto")
    compute = dtype if compute == "auto" else compute
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.get("quant_type", "nf4"),
        bnb_4bit_use_double_quant=bool(quantization.get("double_quant", True)),
        bnb_4bit_compute_dtype=torch_dtype(compute),
        bnb_4bit_quant_storage=torch_dtype(quantization.get("quant_storage", "uint8"))
        if quantization.get("quant_storage", "uint8") != "uint8"
        else None,
    )


def _hub_error(model: dict, exc: Exception) -> UserError:
    name = model["path"]
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


def load_model(
    plan,
    *,
    dtype: str | None = None,
    quantize: bool = True,
    for_training: bool = True,
    device_map=None,
):
    """Load plan.model in `dtype` (default: the resolved plan dtype). With `quantize` and
    plan.quantization set, the base is loaded in 4/8-bit and prepared for k-bit training."""
    from transformers import AutoModelForCausalLM

    model_cfg = plan.model
    dtype = dtype or resolve_dtype(model_cfg.get("dtype", "auto"))
    attn = model_cfg.get("attn_implementation") or "auto"
    attn = "sdpa" if attn == "auto" else attn  # auto: training_attention decides on the loaded model
    check_attn_implementation(attn)
    if model_cfg.get("trust_remote_code"):
        print(f"warning: trust_remote_code is on: Python code shipped with {model_cfg['path']} will run", file=sys.stderr)
    kwargs = {
        "dtype": torch_dtype(dtype),
        "attn_implementation": attn_for_transformers(attn, for_training),
        "trust_remote_code": bool(model_cfg.get("trust_remote_code", False)),
    }
    if model_cfg.get("gguf_file"):
        kwargs["gguf_file"] = model_cfg["gguf_file"]
    if model_cfg.get("revision"):
        kwargs["revision"] = model_cfg["revision"]
    token = _secret(plan, "model.token")
    if token:
        kwargs["token"] = token
    quant = bnb_config(plan.quantization, dtype) if quantize else None
    if quant is not None:
        kwargs["quantization_config"] = quant
        # bitsandbytes places weights at load time; each process takes its own device.
        kwargs["device_map"] = device_map or {"": local_device()}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    try:
        if model_cfg.get("random_init"):
            model = _random_model(plan, kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(model_cfg["path"], **kwargs)
    except OSError as exc:
        if model_cfg.get("source") == "hub" or not os.path.isdir(model_cfg["path"]):
            raise _hub_error(model_cfg, exc) from exc
        raise UserError(f"cannot load model from {model_cfg['path']}: {exc}", where="model.path") from exc
    except ValueError as exc:
        from runner.remote_code import load_error

        found = load_error(model_cfg["path"], exc)
        if found is None:
            raise
        raise found from None
    drop_gguf_quantizer(model)
    if for_training and attn == "varlen":
        check_varlen_model(model)
    if for_training:
        # The KV cache is for generation; in training it also stops transformers from reading
        # packed position_ids as sample boundaries.
        model.config.use_cache = False
        if quant is not None:
            prepare_quantized(model, dtype, bool(plan.training.get("gradient_checkpointing", False)))
    else:
        model.config.use_cache = True
        model.eval()
    return model


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


def _random_model(plan, kwargs: dict):
    """model.random_init: the architecture of config.json with seeded random weights, built on the
    local device (an 8B model initialises in seconds on a GPU, minutes on a CPU). A quantized base
    is saved once in plan dtype under the cache and loaded back through bitsandbytes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = plan.model["path"]
    config = AutoConfig.from_pretrained(path, trust_remote_code=kwargs["trust_remote_code"])
    torch.manual_seed(int(plan.training.get("seed", 0)))
    quant = kwargs.pop("quantization_config", None)
    device_map = kwargs.pop("device_map", None)
    device = local_device() if (quant is not None or device_type() == "cuda") else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=kwargs["dtype"],
                                                 attn_implementation=kwargs["attn_implementation"],
                                                 trust_remote_code=kwargs["trust_remote_code"])
    if quant is None:
        return model
    from pathlib import Path

    staged = Path(plan.data["cache_dir"]) / "random-init" / f"{plan.hashes.get('model') or 'model'}-{plan.training.get('seed', 0)}"
    if not (staged / "config.json").is_file():
        tmp = staged.with_name(staged.name + ".tmp")
        model.save_pretrained(tmp)
        tmp.rename(staged)
    del model
    if device_type() == "cuda":
        torch.cuda.empty_cache()
    return AutoModelForCausalLM.from_pretrained(staged, quantization_config=quant, device_map=device_map, **kwargs)


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


def _secret(plan, key: str):
    secrets = getattr(plan, "secrets", None) or {}
    return secrets.get(key) if hasattr(secrets, "get") else None
