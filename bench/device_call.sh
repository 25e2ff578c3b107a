#!/usr/bin/env bash
# One benchmark call on an offline GPU box (what the device tool runs): install the wheels that
# travelled with the checkout into /tmp/site, run bench/harness.py with the given arguments for each
# ";"-separated group, and pack everything it wrote (results, profiles, logs) into one archive,
# because such boxes often hand back only a few files per call.
#
#   bash bench/device_call.sh "lora8b_packed" "qlora8b --side runner --steps 3,9"
#
# Wheels: .whl/ (scripts/gather_wheels.sh --dest .whl trl datasets jsonschema liger-kernel) and, for
# QLoRA, .whl_bnb/. Shared files: shared/ or .gpu/shared/ inside the checkout (data + baselines).
# Output: $OUT/bench.tgz (OUT defaults to ./bench-out), the harness's table rows on stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/bench-out}
mkdir -p "$OUT/results"
wheels=$(ls .whl/*.whl .whl_bnb/*.whl 2>/dev/null)
if [ -n "$wheels" ] && [ -z "${BENCH_NO_WHEELS:-}" ]; then  # BENCH_NO_WHEELS=1: use what is installed
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels \
    || { echo "wheel install failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
shared=shared
[ -d "$shared/data" ] || shared=.gpu/shared
work=/tmp/bench
status=0
for group in "$@"; do
  # shellcheck disable=SC2086  # each group is a harness argument list
  python3 bench/harness.py $group --data "$PWD/$shared/data" --baselines "$PWD/$shared/baselines" \
    --out "$OUT/results" --work "$work" 2>>"$OUT/results/harness-stderr.log" | grep '^|' || status=1
done
cp "$work"/*.log "$OUT/results/" 2>/dev/null
tar czf "$OUT/bench.tgz" -C "$OUT" results && rm -rf "$OUT/results"
exit $status
