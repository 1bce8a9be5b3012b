#!/usr/bin/env bash
# kiln (burn's flex backend) ÷ PyTorch (CPU, fp32) on this machine, side by side in one run:
# the tiny SD1 pipeline of assets/fixtures/models at 64×64 (20 steps) and SD 1.5's UNet (random
# weights) at 256×256. Needs the reference venv (README, "Tests") and a built kiln:
#
#   cargo build -p kiln-cli && scripts/bench/cpu.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-$HOME/.venvs/ref/bin/python}
KILN=${KILN:-${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}/debug/kiln}
OUT=${OUT:-/tmp/kiln-cpu-bench}
mkdir -p "$OUT"
threads=$(nproc)
echo "$(date -u)  $(lscpu | grep 'Model name' | sed 's/ \+/ /g')  ($threads threads)"
run() {
  local name=$1; shift
  "$KILN" bench "$@" --json >"$OUT/kiln-$name.json"
  "$PY" scripts/bench/torch_reference.py "$@" --threads "$threads" >"$OUT/torch-$name.json" 2>/dev/null
  python3 scripts/bench/compare.py "$OUT/kiln-$name.json" "$OUT/torch-$name.json"
  echo
}
run tiny --model assets/fixtures/models/sd1 --width 64 --height 64 --steps 20 --iters 5
run sd15-256 --preset sd15 --width 256 --height 256 --steps 2 --iters 2
