"""The benchmark scenarios: which runner config, which model shape, which hand-written baseline, and
how their useful work is counted. Plain data; bench/harness.py carries it out."""
from __future__ import annotations

from dataclasses import dataclass, field

# Model shapes (transformers LlamaConfig keys). Weights are never stored: runner builds the
# architecture from config.json (model.random_init) and the baselines build it in memory.
SHAPES = {
    "llama3_8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                      rope_theta=500000.0, tie_word_embeddings=False),
    # Llama-3-70B: FSDP + QLoRA over 2-8 GPUs (bench/random_checkpoint.py writes its weights to disk).
    "llama3_70b": dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=8192,
                       rope_theta=500000.0, tie_word_embeddings=False),
    # Llama-3.2-1B: the "1B-class" full fine-tune.
    "llama32_1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=8192,
                       rope_theta=500000.0, tie_word_embeddings=True),
}
# --smoke: the same family in miniature (the vocabulary is the tokenizer's own).
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rope_theta=500000.0)

# SmolLM2's default system prompt: alpaca_en_lengths.json (the padded baseline's lengths) was
# measured with SmolLM2's tokenizer and chat template, which inserts it.
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@dataclass(frozen=True)
class Baseline:
    script: str                   # file name in the shared baselines dir, or a path under bench/
    shared: bool                  # True: ../shared/baselines, run unchanged with that dir as cwd
    args: tuple = ()
    env: dict = field(default_factory=dict)
    smoke_env: dict = field(default_factory=dict)
    warmup: int = 3               # optimizer steps the script runs before its timed window
    tokens_key: str = "tokens_per_s"  # its printed real-tokens/s field
    attn_ctx: object = None       # attention span for the FLOP count: tokens, "alpaca" or "printed"
    needs_cuda: bool = False      # the script hard-codes cuda (the shared ones)
    smoke_runs: bool = True       # also run under --smoke (when it can run at all)


@dataclass(frozen=True)
class Scenario:
    name: str
    config: str                   # bench/scenarios/<config>
    shape: str
    work: str                     # flops.py work kind: lora, full or dpo_lora
    baseline: Baseline
    description: str
    warmup: int = 5               # runner steps before the timed window (also its log cadence)
    measure: int = 20             # timed runner steps
    smoke: dict = field(default_factory=dict)  # extra runner overrides under --smoke


SCENARIOS = {s.name: s for s in [
    Scenario(
        "lora8b_packed", "lora8b_packed.yaml", "llama3_8b", "lora",
        Baseline("lora8b_baseline.py", shared=True, env={"SEQ": "2048", "MB": "4", "GC": "1"},
                 smoke_env={"SEQ": "256", "MB": "1", "GC": "1"}, attn_ctx="SEQ", needs_cuda=True),
        "Llama-3-8B shape (random init, bf16), LoRA r16 all-linear, seq 2048 packed"),
    Scenario(
        "lora8b_packed_24g", "lora8b_packed_24g.yaml", "llama3_8b", "lora",
        Baseline("lora8b_baseline.py", shared=True, env={"SEQ": "2048", "MB": "4", "GC": "1"},
                 smoke_env={"SEQ": "256", "MB": "1", "GC": "1"}, attn_ctx="SEQ", needs_cuda=True),
        "lora8b_packed under a 24 GiB peak: selective checkpointing (29 of 32 layers), mb 4"),
    Scenario(
        "lora8b_packed_fp8", "lora8b_packed_fp8.yaml", "llama3_8b", "lora",
        Baseline("lora8b_baseline.py", shared=True, env={"SEQ": "2048", "MB": "4", "GC": "1"},
                 smoke_env={"SEQ": "256", "MB": "1", "GC": "1"}, attn_ctx="SEQ", needs_cuda=True),
        "lora8b_packed with training.precision fp8: the frozen base's matmuls in float8 (Hopper)"),
    Scenario(
        "lora8b_alpaca", "lora8b_alpaca.yaml", "llama3_8b", "lora",
        Baseline("baselines2.py", shared=True, args=("padded",), tokens_key="real_tokens_per_s",
                 attn_ctx="alpaca", needs_cuda=True),
        "alpaca_en_demo real lengths: runner packed vs padded-to-longest baseline (mb 8)"),
    Scenario(
        "qlora8b", "qlora8b.yaml", "llama3_8b", "lora",
        Baseline("baselines2.py", shared=True, args=("qlora",), env={"MB": "1"}, tokens_key="real_tokens_per_s",
                 attn_ctx=2048, needs_cuda=True, smoke_runs=False),
        "QLoRA (nf4, double quant, bf16 compute) Llama-3-8B shape, seq 2048 packed"),
    Scenario(
        "lora8b_32k", "lora8b_32k.yaml", "llama3_8b", "lora",
        Baseline("lora8b_baseline.py", shared=True, env={"SEQ": "32768", "MB": "1", "GC": "1"},
                 smoke_env={"SEQ": "256", "MB": "1", "GC": "1"}, attn_ctx="SEQ", needs_cuda=True),
        "long context: LoRA r16 Llama-3-8B shape at 32k tokens per row (YaRN x4), mb 1, checkpointing",
        warmup=3, measure=10),
    Scenario(
        "full1b", "full1b.yaml", "llama32_1b", "full",
        Baseline("baselines/full1b_baseline.py", shared=False, env={"SEQ": "2048", "MB": "4", "GC": "0"},
                 smoke_env={"SEQ": "128", "MB": "2", "GC": "0", "STEPS": "3"}, attn_ctx="SEQ"),
        "full fine-tune, Llama-3.2-1B shape (random init, bf16), seq 2048 packed"),
    Scenario(
        "dpo8b", "dpo8b.yaml", "llama3_8b", "dpo_lora",
        Baseline("baselines/dpo8b_baseline.py", shared=False, env={"MB": "2", "MAX_LENGTH": "2048"},
                 smoke_env={"MB": "2", "MAX_LENGTH": "128", "STEPS": "3", "ROWS": "24"}, attn_ctx="printed",
                 tokens_key="real_tokens_per_s"),
        "DPO (sigmoid, beta 0.1), LoRA r16 all-linear, Llama-3-8B shape, dpo_en_demo"),
]}


def smoke_runner_overrides(cpu: bool) -> list[str]:
    """Overrides that shrink any scenario to seconds (the model dir is already tiny)."""
    out = ["sequence.max_length=128", "training.micro_batch_size=2", "training.gradient_accumulation=1"]
    if cpu:
        out += ["model.dtype=float32", "training.precision=fp32", "training.optimizer=adamw_torch",
                "training.gradient_checkpointing=false", "quantization.bits=null"]
    return out
