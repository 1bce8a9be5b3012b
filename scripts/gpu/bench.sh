#!/usr/bin/env bash
# kiln ÷ PyTorch on one GPU, in one call of the device machine (≤ 8 min), from the repo root.
#
# Prepare here (once per checkout; the folders are git-ignored through .git/info/exclude):
#   scripts/gpu/prepare.sh            # Vulkan loader .debs into .gl/, diffusers wheel into .whl/,
#                                     # the kiln binary (stripped, gzipped) into .bin/
# Then run it with the device tool: command `bash scripts/gpu/bench.sh`, carry [".gl", ".whl", ".bin"].
#
# What it does, all in the same call so the ratios compare like with like, in this order (each
# step is skipped when the call's time budget is nearly spent; $OUT/skipped.txt says which):
#   1. SD 1.5 at 512: scripts/bench/torch_reference.py (CUDA, fp16, CFG batch 2), kiln bench
#      --json (Vulkan, UNet and VAE f16) with the same config, and scripts/bench/compare.py:
#      kiln ÷ torch per component — once with `--gpu-attention burn --gpu-conv burn --gpu-norm
#      burn` (burn's kernels as they are), once with kiln's measured routes (`auto`, the default;
#      its JSON lists every shape it timed): the before/after; each kiln run also profiles one
#      UNet step by op (`--profile`: convolutions, GroupNorms, attention, the rest), and compare.py
#      prints each attention shape's kept route in TFLOP/s against PyTorch's SDPA at that shape;
#   2. scripts/gpu/unet_check.py: kiln's f16 UNet output against PyTorch's on the same weights;
#   3. SDXL at 1024 like 1 (auto only);
#   4. SD 3.5 Medium (8 steps) and FLUX.1-schnell (4 steps) at 1024, f16, against
#      scripts/bench/torch_flow_reference.py (random weights built on the GPU).
# Everything lands in $OUT (the device tool brings it back).
set -uo pipefail
OUT=${OUT:-/tmp/kiln-gpu-out}
mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if ! ldconfig -p | grep -q libvulkan; then
  echo "no Vulkan loader: run scripts/gpu/prepare.sh here and carry .gl" >&2
  exit 1
fi
[ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"
gunzip -c .bin/kiln.gz >/tmp/kiln && chmod +x /tmp/kiln || exit 1
KILN=/tmp/kiln
status=0
# One device call allows 8 minutes: every step gets what is left of BUDGET (at most 240 s) and
# is skipped, with a line saying so, when less than a minute is left. Most important first.
BUDGET=${KILN_GPU_BUDGET_S:-460}
run() {
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 60 ]; then echo "skipped (budget spent, ${SECONDS}s): $*" | tee -a "$OUT/skipped.txt" >&2; return 1; fi
  [ "$left" -gt 240 ] && left=240
  echo "+ [${SECONDS}s, limit ${left}s] $*" >&2
  timeout "$left" "$@"
}
kiln_bench() { # preset size name [extra flags]: kiln bench --json into $OUT/kiln-NAME.json
  # the log gets each component's time and each route measurement as they happen (a run that
  # times out still leaves them); STEPS overrides the 20 steps, the flow presets skip --profile
  local preset=$1 size=$2 name=$3; shift 3
  local profile=--profile
  case $preset in sd35*|flux*) profile= ;; esac
  RUST_LOG=warn,kiln_nn=info,kiln_pipeline=info run $KILN bench --preset "$preset" --device vulkan --dtype f16 --vae-dtype f16 --width "$size" --height "$size" \
    --steps "${STEPS:-20}" --batch 1 --iters 5 $profile --json "$@" >"$OUT/kiln-$name.json" 2>"$OUT/kiln-$name.log" || { status=1; tail -5 "$OUT/kiln-$name.log"; return 1; }
}
torch_bench() { # preset size [steps]: the flow presets through torch_flow_reference.py
  local script=scripts/bench/torch_reference.py
  case $1 in sd35*|flux*) script=scripts/bench/torch_flow_reference.py ;; esac
  run python3 $script --preset "$1" --device cuda --dtype fp16 --vae-dtype fp16 \
    --width "$2" --height "$2" --steps "${3:-20}" --batch 1 --iters 5 >"$OUT/torch-$1.json" 2>"$OUT/torch-$1.log" || { status=1; tail -5 "$OUT/torch-$1.log"; return 1; }
}
compare() { # kiln-name torch-preset
  python3 scripts/bench/compare.py "$OUT/kiln-$1.json" "$OUT/torch-$2.json" | tee "$OUT/ratios-$1.txt" || status=1
}
torch_bench sd15 512
# before/after for kiln's GPU routes (attention head dim, im2col conv, fused GroupNorm): burn's as
# they are first (this also fills burn's persistent autotune cache, so the auto run's first use
# adds only what its alternatives need), then auto
kiln_bench sd15 512 sd15-burn --gpu-attention burn --gpu-conv burn --gpu-norm burn && compare sd15-burn sd15
kiln_bench sd15 512 sd15 && compare sd15 sd15
run python3 scripts/gpu/unet_check.py write /tmp/unet-check --preset sd15 --size 512 --device cuda &&
  run $KILN bench --unet-check /tmp/unet-check --device vulkan --dtype f16 &&
  python3 scripts/gpu/unet_check.py compare /tmp/unet-check | tee "$OUT/unet-check.json" || status=1
torch_bench sdxl 1024
kiln_bench sdxl 1024 sdxl && compare sdxl sdxl
torch_bench sd35m 1024 8
STEPS=8 kiln_bench sd35m 1024 sd35m && compare sd35m sd35m
torch_bench flux-schnell 1024 4
STEPS=4 kiln_bench flux-schnell 1024 flux-schnell && compare flux-schnell flux-schnell
echo "done in ${SECONDS}s" | tee -a "$OUT/gpu.txt"
exit $status
