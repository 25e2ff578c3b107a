#!/usr/bin/env bash
# Sets up the environment, fine-tunes SmolLM2-135M-Instruct on the identity data (CPU, a few
# minutes), then asks the result who it is (the README's main-job command). Its whole output fits
# on one screen: runner prints its own progress only (`--debug` adds the libraries' messages).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> setting up .venv (the first time: a few minutes)"
bash scripts/setup.sh --core
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "==> fine-tuning SmolLM2-135M-Instruct on CPU: cookbook/quickstart.yaml"
runner train cookbook/quickstart.yaml output.overwrite=true
echo "==> asking the fine-tuned model who it is"
runner generate outputs/quickstart -p "Who are you?" -p "What is your name?" -p "Who created you?" \
  -p "Introduce yourself." -p "Are you ChatGPT?"
