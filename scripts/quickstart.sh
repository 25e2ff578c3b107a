#!/usr/bin/env bash
# Sets up the environment, fine-tunes SmolLM2-135M-Instruct on the identity data (CPU, a few
# minutes), then asks the result who it is (the README's main-job command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
runner train cookbook/quickstart.yaml output.overwrite=true
runner generate outputs/quickstart -p "Who are you?" -p "What is your name?" -p "Who created you?" \
  -p "Introduce yourself." -p "Are you ChatGPT?"
