"""A quiet terminal for the `runner` commands that load models or tokenizers (train, preprocess,
generate, merge): runner's own
progress and warnings, and the libraries' chatter only with --debug. A program that imports runner
as a library keeps its own logging and warning settings: only the CLI calls this module.

What the libraries print on a plain run, and where each is kept off the terminal:
- Python warnings raised inside the libraries (deprecations, PEFT's notices): one filter on their
  modules. runner's own warnings are printed lines, never Python warnings.
- Log records of level WARNING and below (transformers, datasets, accelerate, bitsandbytes',
  kernels' and Liger's notices): the documented verbosity variables (TORCH_LOGS for torch's own
  loggers), and the loggers' levels.
- Progress bars of weight loading: transformers' tqdm hook (a public API); its GGUF reader draws a
  bar of plain tqdm, which `_quiet_gguf_bar` points at transformers' own tqdm (the one private
  name used here; tests/test_quiet_terminal.py runs the real GGUF load to pin it).
- "[INFO] Running in WANDB offline mode", printed on import by transformers' W&B integration
  whenever WANDB_MODE=offline, tracking or not: `import_trainer_quietly`. W&B's own banner and
  summary tables: its `quiet` setting (runner.train.tracking asks `active()`).
- bitsandbytes' kernel lookup on import (a hub request, then "Failed to load CPU gemm_4bit_forward"
  on CPUs with AVX512-BF16): PEFT imports bitsandbytes whenever it is installed. A run that uses
  no bitsandbytes feature does not import it (`keep_out_bitsandbytes`)."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import warnings
from pathlib import Path

LIBRARY_MODULES = (r"(transformers|peft|trl|accelerate|datasets|huggingface_hub|torch|bitsandbytes|kernels|safetensors"
                   r"|liger_kernel)(\.|$)")
# transformers and datasets configure their loggers from TRANSFORMERS_VERBOSITY / DATASETS_VERBOSITY.
# liger_kernel: at its first kernel call it logs one warning per optional backend it cannot import
# (CuTe DSL, Ascend), while its Triton kernels, the ones runner uses, load fine.
LIBRARY_LOGGERS = ("peft", "trl", "accelerate", "huggingface_hub", "bitsandbytes", "kernels", "torch", "liger_kernel")
WANDB_OFFLINE_NOTICE = "[INFO] Running in WANDB offline mode"
# Optimizers that transformers builds from bitsandbytes.
BNB_OPTIMIZER_MARKS = ("8bit", "paged_")

_quiet = False  # set once a command asked for a quiet terminal


def quiet_libraries(debug: bool, *, gguf: bool = False) -> None:
    """Library chatter off for the rest of this process, unless `debug`. A verbosity the user set in
    the environment (TRANSFORMERS_VERBOSITY, ...) is kept. `gguf`: the model loads from a GGUF file
    (the GGUF reader is only imported then: it brings torch)."""
    global _quiet
    if debug:
        return
    _quiet = True
    warnings.filterwarnings("ignore", module=LIBRARY_MODULES)
    users_verbosity = os.environ.get("TRANSFORMERS_VERBOSITY")
    for name in ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY"):
        os.environ.setdefault(name, "error")  # read when the library first configures its logger
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # c10d's per-rank notices, read when torch loads
    # torch resets its "torch" logger to WARNING when torch._dynamo first loads (torchao, imported by
    # transformers wherever it is installed, brings it), undoing the level set below; TORCH_LOGS is what it reads then.
    os.environ.setdefault("TORCH_LOGS", "-all")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    if users_verbosity is None:
        hf_logging.set_verbosity_error()  # in case transformers configured its logger already
    hf_logging.set_tqdm_hook(_hidden_bar)  # weight loading; hub downloads keep their own bars
    if gguf:
        _quiet_gguf_bar(hf_logging.tqdm)


def active() -> bool:
    """Whether a command asked for the quiet terminal (not --debug, not library use)."""
    return _quiet


def _hidden_bar(factory, args, kwargs):
    return factory(*args, **{**kwargs, "disable": True})


def _quiet_gguf_bar(quiet_tqdm) -> None:
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_loading
    except ImportError:  # no gguf support here: no bar either
        return
    if hasattr(gguf_loading, "tqdm"):
        gguf_loading.tqdm = quiet_tqdm


def import_trainer_quietly() -> None:
    """Under quiet_libraries: import transformers' tracker integrations (the Trainer imports them)
    without their notice on stdout; anything else printed there still reaches the terminal."""
    if not _quiet or "transformers.integrations.integration_utils" in sys.modules:
        return
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        import transformers.integrations.integration_utils  # noqa: F401
    rest = [line for line in captured.getvalue().splitlines() if line.strip() != WANDB_OFFLINE_NOTICE]
    if rest:
        print("\n".join(rest))


def bitsandbytes_needed(plan, *, training: bool) -> bool:
    """Whether this run (or, with training False, loading its base for generation or a merge) uses
    bitsandbytes: quantization, an 8-bit or paged optimizer, or a base saved pre-quantized by it.
    A base whose config cannot be read here (a hub model not downloaded yet) counts as using it."""
    if training and (plan.quantization.bits or any(mark in plan.training.optimizer for mark in BNB_OPTIMIZER_MARKS)):
        return True
    if plan.model.gguf_file:
        return False  # GGUF weights are dequantized by transformers itself
    from runner.plan.resolve import model_dirs
    from runner.plan.sections import to_dict

    model_dir, _ = model_dirs(to_dict(plan.model))
    config = Path(model_dir) / "config.json" if model_dir else None
    if config is None or not config.is_file():
        return True
    try:
        quant = json.loads(config.read_text()).get("quantization_config") or {}
    except (OSError, ValueError):
        return True
    return "bitsandbytes" in str(quant.get("quant_method", "")) or bool(quant.get("load_in_4bit") or quant.get("load_in_8bit"))


def keep_out_bitsandbytes(plan, *, training: bool) -> bool:
    """For the rest of this process, `import bitsandbytes` fails as if it were not installed, when
    the run does not use it (PEFT and transformers then skip their bitsandbytes paths). Only for a
    process that runs one command: a later run in the same process might need it. Returns whether
    it is kept out."""
    if "bitsandbytes" in sys.modules or bitsandbytes_needed(plan, training=training):
        return False
    sys.modules["bitsandbytes"] = None  # Python's own way to mark a module as unavailable
    return True


def quiet_for_run_dir(run_dir, debug: bool) -> None:
    """quiet_libraries and keep_out_bitsandbytes for a command that loads a finished run (generate,
    merge): its base loads unquantized."""
    plan = None
    if (Path(run_dir) / "plan.json").is_file():
        from runner.ship.merge import load_run_plan

        plan = load_run_plan(run_dir)
    quiet_libraries(debug, gguf=bool(plan and plan.model.gguf_file))
    if plan is not None:
        keep_out_bitsandbytes(plan, training=False)
