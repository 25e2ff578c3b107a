"""Every private member of another library that runner reaches into, in one list. Each is used in
one module (named here) because no public API does the job; tests/test_hooks.py checks each against
the installed library, so an upgrade that renames or reshapes one fails that test with this
table's words instead of a run that silently does something else."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hook:
    owner: str            # importable dotted path of the class or module
    member: str
    params: tuple | None  # the parameters runner relies on (None: not a function)
    used_in: str
    why: str


HOOKS = (
    Hook("trl.DPOTrainer", "_prepare_dataset", ("self", "dataset", "processing_class", "args", "dataset_name"),
         "runner/train/stages/dpo.py", "TRL re-tokenizes; runner's pipeline already did (a column rename instead)"),
    Hook("trl.KTOTrainer", "_prepare_dataset", ("self", "dataset", "processing_class", "args", "dataset_name"),
         "runner/train/stages/kto.py", "as for DPO, plus the KL pairs TRL builds after tokenizing"),
    Hook("trl.experimental.orpo.ORPOTrainer", "tokenize_row", ("self", "feature", "model"),
         "runner/train/stages/orpo.py", "ORPO's concatenated rows built from the pipeline's ids"),
    Hook("trl.GRPOTrainer", "_tokenize_prompts", ("self", "prompts"), "runner/train/stages/grpo.py",
         "the prompts as the pipeline tokenized them (TRL would add the tokenizer's special tokens again)"),
    Hook("trl.experimental.cpo.CPOTrainer", "tokenize_row", ("self", "feature", "model"),
         "runner/train/stages/cpo.py", "CPO's (and SimPO's) concatenated rows built from the pipeline's ids"),
    Hook("trl.RewardTrainer", "_prepare_dataset", ("self", "dataset", "processing_class", "args", "dataset_name"),
         "runner/train/stages/rm.py", "TRL re-tokenizes; the pipeline's prompt + answer ids are joined instead"),
    Hook("transformers.TrainingArguments", "_n_gpu", None, "runner/train/hooks.py (one_device)",
         "one process that sees several GPUs would wrap the model in nn.DataParallel"),
    Hook("accelerate.state.PartialState", "_shared_state", None, "runner/train/distributed.py (shard_on_cpu)",
         "Accelerate turns FSDP on only for accelerators; on CPU processes it would silently run DDP"),
    Hook("torch", "_amp_foreach_non_finite_check_and_unscale_", ("grads", "found_inf", "inv_scale"),
         "runner/train/nonfinite.py", "one fused kernel checks every gradient for inf/NaN without a host sync"),
    Hook("torch.optim.AdamW", "_step_supports_amp_scaling", None, "runner/train/nonfinite.py",
         "the fused optimizer skips a step on the device when it reads found_inf"),
    Hook("transformers.quantizers.base", "_assign_is_quantized", ("model",),
         "runner/train/model.py (drop_gguf_quantizer)",
         "it flags each module's config _is_quantized; a dequantized GGUF model must not keep the flag"),
    Hook("liger_kernel.transformers", "_apply_liger_kernel_to_instance", ("model",), "runner/train/fast/liger.py",
         "Liger's kernels on an already built model instance (its public helpers patch classes)"),
    Hook("lm_eval.tasks._yaml_loader", "load_yaml", ("path", "resolve_func", "recursive"), "runner/evaluate/tasks.py",
         "a task file read as lm-eval reads it (its include: bases merged) to check its data_files before loading"),
    Hook("swanlab.sdk.internal.core_python.store.DataStoreReader", "open", ("self", "filename"),
         "runner/train/tracker_swanlab.py",
         "the steps an interrupted launch recorded, read as `swanlab sync` reads them (no public reader)"),
)


def one_device(args) -> None:
    """A process that sees several GPUs trains on one (`runner launch` starts one process per GPU):
    the Trainer would otherwise wrap the model in nn.DataParallel."""
    if args.n_gpu > 1:
        args._n_gpu = 1
