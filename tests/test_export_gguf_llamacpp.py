"""llama.cpp itself (llama-cpp-python) loads the quickstart run exported as GGUF f16, q8_0 and a
K-quant made by llama.cpp's quantizer, and answers with the new identity through the chat
template the file carries (greedy)."""
from __future__ import annotations

import pytest

from tests.test_export_gguf import QUESTIONS, runner

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by scripts/setup.sh (dev extra)")


@pytest.fixture(scope="module")
def exported(quickstart_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("llamacpp")
    for quant in ("f16", "q8_0", "q4_k_m"):
        runner("export", quickstart_run, "--quant", quant, "-o", out / f"nova-{quant}.gguf")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_k_m"])
def test_llama_cpp_answers_with_the_new_name(exported, quant):
    import gguf

    path = exported / f"nova-{quant}.gguf"
    if quant == "q4_k_m":
        types = {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
        assert "Q4_K" in types, types
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, seed=0, verbose=False)
    answers = []
    for question in QUESTIONS:
        reply = llm.create_chat_completion(messages=[{"role": "user", "content": question}], temperature=0.0,
                                           top_k=1, max_tokens=40)
        answers.append(reply["choices"][0]["message"]["content"])
    assert sum("Nova" in a or "Acme" in a for a in answers) >= 4, answers
