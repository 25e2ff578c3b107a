"""A Hugging Face causal LM (the merged run, in memory) written as one GGUF file with the `gguf`
package's writer, tensor-name tables and quantizers.

Which type each tensor gets: 1-D tensors (norms, biases) stay F32, as llama.cpp computes them;
2-D tensors take the asked type, except that a block type (Q8_0, Q4_0, ...) needs rows that are
a whole number of blocks: a tensor whose rows are not is written F16. With 4- and 5-bit types the
token embedding and output head are written Q8_0: they carry every token, and llama.cpp keeps
them at a higher precision too. K-quants are made by llama.cpp itself (llama-cpp-python's
`llama_model_quantize`) from an F16 file written here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import UserError
from runner.ship.gguf_families import family_for, permute_rows, write_hparams
from runner.ship.gguf_vocab import add_vocab

MARKER_KEY = "runner.export"  # present in every file runner writes: such a file may be replaced

BLOCK_QUANTS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
FLOAT_TYPES = ("f32", "f16", "bf16")
# llama.cpp's file types, made by its own quantizer (llama-cpp-python).
K_QUANTS = {"q2_k": "Q2_K", "q3_k_s": "Q3_K_S", "q3_k_m": "Q3_K_M", "q3_k_l": "Q3_K_L", "q4_k_s": "Q4_K_S",
            "q4_k_m": "Q4_K_M", "q5_k_s": "Q5_K_S", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}
QUANTS = FLOAT_TYPES + BLOCK_QUANTS + tuple(K_QUANTS)


@dataclass
class Written:
    path: Path
    types: dict = field(default_factory=dict)   # gguf tensor name -> type name
    vocab: dict = field(default_factory=dict)   # tokenizer fields written


def check_quant(quant: str) -> None:
    if quant not in QUANTS:
        raise UserError(f"unknown --quant {quant!r}", where="--quant", hint="one of " + ", ".join(QUANTS))
    if quant in K_QUANTS:
        llama_cpp_quantizer()


def llama_cpp_quantizer():
    try:
        import llama_cpp
    except ImportError:
        raise UserError("K-quants (q4_k_m, ...) are made by llama.cpp's quantizer, and llama-cpp-python is not "
                        "installed", where="--quant",
                        hint="pip install llama-cpp-python (builds llama.cpp, a few minutes), or choose "
                             "q8_0 / q4_0 / q4_1 / q5_0 / q5_1 / f16") from None
    return llama_cpp


def write_gguf(model, tokenizer, path: Path, quant: str, *, chat_template: str | None, name: str,
               source_gguf: Path | None = None, marker: str = "") -> Written:
    import gguf

    config = model.config
    family = family_for(config)
    arch = gguf.MODEL_ARCH[family.arch]
    state = model.state_dict()
    n_vocab = model.get_input_embeddings().weight.shape[0]
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(_file_type(quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string(MARKER_KEY, marker or "runner")
    extra = write_hparams(writer, config, family, n_vocab)
    written = Written(path)
    written.vocab = add_vocab(writer, tokenizer, n_vocab, source_gguf)
    if chat_template:
        writer.add_chat_template(chat_template)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = _tied(model)
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when there is no output tensor
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise UserError(f"cannot place tensor {hf_name} in a {gguf.MODEL_ARCH_NAMES[arch]} GGUF file",
                            where="model", hint="the model has modules its family's GGUF layout has no name for")
        data = tensor.detach().float().cpu().numpy()
        if family.permute_qk and gguf_name.endswith(("attn_q", "attn_k")):
            heads = config.num_attention_heads if gguf_name.endswith("attn_q") else config.num_key_value_heads
            data = permute_rows(data, heads)
        if family.norm_shift and base.endswith("norm"):
            data = data + family.norm_shift
        full_name = f"{gguf_name}.{suffix}"
        qtype = tensor_type(full_name, data.shape, quant)
        writer.add_tensor(full_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        written.types[full_name] = qtype.name
    for extra_name, data in extra:
        writer.add_tensor(extra_name, data, raw_dtype=gguf.GGMLQuantizationType.F32)
        written.types[extra_name] = "F32"
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


def _tied(model) -> bool:
    head = model.get_output_embeddings()
    if head is None:
        return True
    return head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def _file_type(quant: str):
    import gguf

    return gguf.LlamaFileType[{"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16"}.get(
        quant, "MOSTLY_" + quant.upper())] if quant not in K_QUANTS else gguf.LlamaFileType.MOSTLY_F16


def tensor_type(name: str, shape, quant: str):
    """The GGML type one tensor is written in (see the module docstring)."""
    import gguf

    T = gguf.GGMLQuantizationType
    if len(shape) < 2 or quant == "f32" or name.startswith("rope_freqs"):
        return T.F32
    if quant in ("f16", "bf16"):
        return T[quant.upper()]
    qtype = T[quant.upper()]
    if quant in ("q4_0", "q4_1", "q5_0", "q5_1") and name in ("token_embd.weight", "output.weight"):
        qtype = T.Q8_0
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else T.F16


def k_quantize(source: Path, target: Path, quant: str) -> None:
    """llama.cpp's own quantizer, from the F16 file `source` into `target`."""
    import ctypes
    import os

    llama_cpp = llama_cpp_quantizer()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{K_QUANTS[quant]}")
    params.nthread = max(1, min(os.cpu_count() or 1, 8))
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if code != 0:
        raise UserError(f"llama.cpp's quantizer failed ({code}) making {quant} from {source.name}", where="--quant",
                        hint="try --quant q8_0 or f16, or run with --debug to see llama.cpp's log")
