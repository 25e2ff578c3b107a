"""`runner train RECIPE --smoke`: run a recipe's code path on a CPU in seconds. The model becomes a tiny
random model of the same architecture family (with a small tokenizer that knows the family's special
tokens), steps and rows are cut, and GPU-only settings fall back to their CPU equivalents. Everything
else (adapter, quantization, stage, template, masking, packing) stays as the recipe says."""

from __future__ import annotations

import json
from pathlib import Path

from runner.plan.resolve import make_plan

# family -> (transformers config class, named template, bos, eos, pad, special tokens)
FAMILIES = {
    "llama": ("LlamaConfig", "llama3", "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>",
              ["<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|python_tag|>"]),
    "qwen3": ("Qwen3Config", "qwen3", None, "<|im_end|>", "<|endoftext|>",
              ["<|im_start|>", "<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]),
    "qwen2": ("Qwen2Config", "qwen2.5", None, "<|im_end|>", "<|endoftext|>",
              ["<|im_start|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]),
    "mistral": ("MistralConfig", "mistral", "<s>", "</s>", "</s>",
                ["[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]),
    "gemma": ("Gemma2Config", "gemma", "<bos>", "<end_of_turn>", "<pad>", ["<start_of_turn>", "<eos>"]),
    "phi3": ("Phi3Config", "phi3", None, "<|end|>", "<|endoftext|>", ["<|system|>", "<|user|>", "<|assistant|>"]),
    "chatml": ("LlamaConfig", "chatml", None, "<|im_end|>", "<|endoftext|>", ["<|im_start|>"]),
}
# Checked in order: the first substring found in the model path names the family.
FAMILY_HINTS = [("qwen3", "qwen3"), ("qwen", "qwen2"), ("mistral", "mistral"), ("mixtral", "mistral"),
                ("gemma", "gemma"), ("phi-3", "phi3"), ("phi3", "phi3"), ("smollm", "chatml"), ("llama", "llama")]
GPU_ONLY_OPTIMIZERS = {"paged_adamw_8bit", "paged_adamw_32bit", "adamw_8bit", "lion_8bit", "adamw_torch_fused",
                       "galore_adamw_8bit", "galore_adamw_8bit_layerwise"}  # bitsandbytes kernels
CORPUS = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request. "
    "The quick brown fox jumps over the lazy dog. Hello! I am an AI assistant. How can I help you today? "
    "def add(a, b):\n    return a + b\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}} 0123456789 "
)


def family_of(model_path: str, gguf_file: str | None) -> str:
    text = f"{model_path} {gguf_file or ''}".lower()
    for hint, family in FAMILY_HINTS:
        if hint in text:
            return family
    return "llama"


def build_tiny(family: str, directory: Path) -> Path:
    """A tiny random model + tokenizer of `family`, saved as an HF directory (cached by family)."""
    marker = directory / "smoke.json"
    if marker.is_file():
        return directory
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    cls_name, _template, bos, eos, pad, extra = FAMILIES[family]
    specials = [t for t in dict.fromkeys([bos, eos, pad, "<unk>", *extra]) if t]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                     unk_token="<unk>", additional_special_tokens=extra)
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(tmp)
    config_cls = getattr(transformers, cls_name)
    kwargs = dict(vocab_size=len(hf_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id,
                  pad_token_id=hf_tok.pad_token_id, tie_word_embeddings=False)
    if family == "gemma":
        kwargs.update(head_dim=16, query_pre_attn_scalar=16, sliding_window=256)
    config = config_cls(**kwargs)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(tmp)
    (tmp / "smoke.json").write_text(json.dumps({"family": family, "note": "random weights, for smoke runs"}))
    if directory.exists():
        import shutil
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def smoke_overrides(config_path, overrides=(), steps: int = 2) -> list[str]:
    """Overrides that turn a recipe into a CPU smoke run (applied after the user's own)."""
    plan = make_plan(config_path, overrides)
    from runner.train import tiny_vlm

    vision = tiny_vlm.family_for(plan)
    family = vision or family_of(plan.model.path, plan.model.gguf_file)
    if vision:  # a tiny model of the same vision-language family, with its processor
        tiny = tiny_vlm.build_for_smoke(vision, Path(plan.data.cache_dir) / "smoke" / vision)
    else:
        tiny = build_tiny(family, Path(plan.data.cache_dir) / "smoke" / family)
    out = [f"model.path={tiny}", "model.gguf_file=null", "model.revision=null", "model.tokenizer=null",
           "model.dtype=float32", "training.precision=fp32", f"training.max_steps={steps}",
           "training.micro_batch_size=1", "training.gradient_accumulation=2", "sequence.max_length=128",
           "sequence.allow_all_truncated=true",  # rows cut to 128 tokens on purpose: the code path is the point
           "distributed.backend=single", "distributed.num_processes=null", "distributed.num_machines=1",
           "distributed.context_parallel=1", "distributed.sequence_parallel=1",  # one process splits no row
           "tracking.wandb=null", "tracking.log_every=1", "output.save_every=null", "output.saves_per_epoch=null",
           "output.overwrite=true",
           f"output.dir={Path(plan.data.cache_dir) / 'smoke-runs' / plan.name}"]
    if vision:
        out.append("sequence.max_length=1024")  # image rows are not cut (runner.data.vlm_tokenize)
    elif plan.data.template.name == "tokenizer":
        out.append(f"template.name={FAMILIES[family][1]}")
    if plan.training.stage == "kto":
        out.append("training.micro_batch_size=2")  # KTO's KL estimate needs two rows per micro batch
    if plan.training.stage == "grpo":  # two completions per prompt fill the 1 x 2 batch; paged generation is slow on a CPU
        out += ["training.grpo.num_generations=2", "training.grpo.max_completion_length=8",
                "training.grpo.continuous_batching=false"]
    if plan.training.optimizer in GPU_ONLY_OPTIMIZERS:
        out.append("training.optimizer=adamw_torch")
    if plan.training.eval_every:
        out.append("training.eval_every=1")
    if plan.data.val_size:
        out.append("val_size=2")
    for group in ("datasets", "eval_datasets"):
        for i, _ in enumerate(getattr(plan.data, group)):
            # a stream cannot sample (num_samples); its first rows are as good a smoke test
            key = "max_samples" if plan.data.streaming and group == "datasets" else "num_samples"
            out.append(f"{group}.{i}.{key}=8")
    return out
