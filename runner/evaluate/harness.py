"""The bridge to lm-evaluation-harness: the model loaded as it trained, wrapped in lm-eval's HFLM
(an already-loaded model object: lm-eval never loads weights itself), and `simple_evaluate` run on
tasks loaded beforehand (runner.evaluate.tasks).

A run directory's model is its base as training loaded it (dtype, attention, quantization) with the
adapter applied, not merged: `--baseline` evaluates the same object again inside PEFT's
`disable_adapter()`, so base and fine-tune differ by the adapter alone. A run that trained every
weight (adapter.kind full or freeze) has no adapter to switch off: its base is loaded after it."""
from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError


@dataclass
class Loaded:
    model: object                  # a PeftModel (adapter runs) or a transformers model
    tokenizer: object              # with the chat template the run trained with
    plan: object                   # the run's Plan (plan.json), or the config's
    run_dir: Path | None           # None: a config's base model
    has_adapter: bool


@dataclass(frozen=True)
class Settings:
    """One evaluation's choices (CLI flags over the config's `evaluation:` section)."""
    tasks: tuple[str, ...]
    num_fewshot: int | None
    limit: float | None
    chat: bool
    baseline: bool
    batch_size: int


def load_run(run_dir: Path, plan) -> Loaded:
    """A finished run's model: base + adapter (PeftModel, adapter active), or its full weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runner.train.model import attn_for_transformers, load_model

    tokenizer = AutoTokenizer.from_pretrained(run_dir)  # carries the training chat template
    dtype = run_dtype(plan)
    attention = plan.runtime.attn_implementation if plan.runtime else plan.model.attn_implementation
    if (run_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base = load_model(plan, dtype=dtype, attn_implementation=attention, for_training=False)
        if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
            base.resize_token_embeddings(len(tokenizer))  # special_tokens.add grew it in training
        model = PeftModel.from_pretrained(base, run_dir)
    else:
        from runner.train.model import torch_dtype

        model = AutoModelForCausalLM.from_pretrained(
            run_dir, dtype=torch_dtype(dtype), attn_implementation=attn_for_transformers(attention, False))
    return Loaded(_ready(model, plan), tokenizer, plan, run_dir, (run_dir / "adapter_config.json").is_file())


def load_config_model(plan) -> Loaded:
    """A config's model, before any training: its base with the training template."""
    from runner import data as pipeline
    from runner.train.model import load_model

    tokenizer = pipeline.load_tokenizer(plan)
    model = load_model(plan, dtype=run_dtype(plan), attn_implementation=plan.model.attn_implementation,
                       for_training=False)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return Loaded(_ready(model, plan), tokenizer, plan, None, False)


def load_base(loaded: Loaded) -> Loaded:
    """The base of a run that trained every weight, loaded as the run was."""
    from runner.train.model import load_model

    plan = loaded.plan
    attention = plan.runtime.attn_implementation if plan.runtime else plan.model.attn_implementation
    model = load_model(plan, dtype=run_dtype(plan), attn_implementation=attention, for_training=False)
    if len(loaded.tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(loaded.tokenizer))
    return Loaded(_ready(model, plan), loaded.tokenizer, plan, loaded.run_dir, False)


def run_dtype(plan) -> str:
    """The dtype the run trained in; for a config not trained yet, the one training would pick."""
    if plan.runtime:
        return plan.runtime.dtype
    if plan.model.dtype != "auto":
        return plan.model.dtype
    from runner.train.runtime import environment

    return "bfloat16" if environment().bf16_supported else "float32"


def evaluate(loaded: Loaded, tasks, settings: Settings, *, adapter: bool = True, quiet: bool = True) -> dict:
    """lm-eval's results dict for `loaded` (with its adapter switched off when not `adapter`)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    template = loaded.plan.data.template
    chat_args = {"enable_thinking": template.enable_thinking} if template.enable_thinking is not None else {}
    off = loaded.model.disable_adapter() if (loaded.has_adapter and not adapter) else contextlib.nullcontext()
    with library_output(quiet):
        lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=settings.batch_size,
                  chat_template_args=chat_args)
        with off:
            try:
                results = simple_evaluate(
                    lm, tasks=tasks.objects, task_manager=tasks.manager, num_fewshot=settings.num_fewshot,
                    limit=settings.limit, apply_chat_template=settings.chat, fewshot_as_multiturn=settings.chat,
                    system_instruction=template.system_prompt if settings.chat else None, log_samples=False)
            except ValueError as err:  # lm-eval refuses a combination (unsafe code, multimodal task, ...)
                raise UserError(f"lm-evaluation-harness refused the evaluation: {str(err).splitlines()[0][:300]}",
                                where="--tasks", hint="--debug shows the traceback") from err
    if results is None:
        raise UserError("lm-evaluation-harness returned no results (not the main process)")
    return results


def free(loaded: Loaded) -> None:
    """Give a model's memory back before another one loads."""
    loaded.model = None
    free_memory_after_training()


def free_memory_after_training() -> None:
    """Objects no longer referenced (the trainer, its model) collected, and the CUDA cache emptied."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _ready(model, plan):
    from runner.train.model import device_type

    if not plan.quantization.bits and device_type() != "cpu":
        model.to(device_type())  # a quantized base was placed on its device as it loaded
    model.eval()
    return model


@contextlib.contextmanager
def library_output(quiet: bool):
    """lm-eval's log lines off, and its progress bars only on a terminal (there they redraw in
    place; in a log file each redraw would be a line). Programs lm-eval starts (`git describe` for
    its record, which complains outside a repository) write to the process's stderr directly: that
    descriptor points at /dev/null meanwhile, and Python's own sys.stderr at the real one (a
    terminal) or nowhere. Unless --debug."""
    if not quiet:
        yield
        return
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    sys.stderr.flush()
    tty = sys.stderr.isatty()
    saved_fd = os.dup(2)
    null_fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null_fd, 2)
    python_stderr = sys.stderr
    sys.stderr = os.fdopen(os.dup(saved_fd), "w", buffering=1) if tty else io.StringIO()
    try:
        yield
    finally:
        if tty:
            sys.stderr.close()
        sys.stderr = python_stderr
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        os.close(null_fd)
        logger.setLevel(level)
