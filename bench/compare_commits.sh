#!/usr/bin/env bash
# runner at this checkout against runner at an earlier commit, each scenario in one launch: this
# checkout's runner and baseline, then the earlier commit's runner, on the same warm GPU.
#
# Here, once (the folders are ignored, not committed; they travel with the call):
#   scripts/gather_wheels.sh --dest .whl trl datasets jsonschema liger-kernel
#   mkdir -p shared && cp -r ../shared/baselines ../shared/data shared/
#   rm -rf .before && mkdir .before && git archive COMMIT | tar -x -C .before
#   grep -qx '/.before/' .git/info/exclude || echo '/.before/' >> .git/info/exclude
# On the GPU box (device tool, carry [".whl", ".before"]):
#   bash bench/compare_commits.sh "lora8b_packed full1b" "--steps 5,20 --timeout 140"
# Output: $OUT/compare.tgz (after/ and before/ result folders and logs); the table rows on stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
SCENARIOS=${1:-"lora8b_packed full1b"}
EXTRA=${2:-"--timeout 140"}
OUT=${OUT:-$PWD/bench-out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed" >&2; exit 1; }
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT/compare/after" "$OUT/compare/before"
common="--data $PWD/shared/data --baselines $PWD/shared/baselines $EXTRA"
for s in $SCENARIOS; do
  echo "== $s, this checkout (runner and baseline) $(date +%T)"
  # shellcheck disable=SC2086  # argument lists
  python3 bench/harness.py "$s" $common --out "$OUT/compare/after" --work /tmp/cmp-after \
    2>>"$OUT/compare/stderr.log" | grep '^|'
  echo "== $s, the earlier commit (runner) $(date +%T)"
  # shellcheck disable=SC2086
  python3 .before/bench/harness.py "$s" --side runner $common --out "$OUT/compare/before" --work /tmp/cmp-before \
    2>>"$OUT/compare/stderr.log" | grep '^|'
done
cp /tmp/cmp-after/*.log "$OUT/compare/after/" 2>/dev/null
cp /tmp/cmp-before/*.log "$OUT/compare/before/" 2>/dev/null
tar czf "$OUT/compare.tgz" -C "$OUT" compare && rm -rf "$OUT/compare"
