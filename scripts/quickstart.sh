#!/usr/bin/env bash
# Sets up the environment, fine-tunes SmolLM2-135M-Instruct on the identity data (CPU, a few
# minutes), then asks the result who it is (the README's main-job command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
runner train cookbook/quickstart.yaml output.overwrite=true
for q in "Who are you?" "What is your name?" "Who created you?" "Introduce yourself." "Are you ChatGPT?"; do
  runner generate outputs/quickstart -p "$q"
done
