#!/usr/bin/env bash
# kiln ÷ PyTorch on one GPU, in one call of the device machine (≤ 8 min), from the repo root.
#
# Prepare here (once per checkout; the folders are git-ignored through .git/info/exclude):
#   scripts/gpu/prepare.sh            # Vulkan loader .debs into .gl/, diffusers wheel into .whl/,
#                                     # the kiln binary (stripped, gzipped) into .bin/
# Then run it with the device tool: command `bash scripts/gpu/bench.sh`, carry [".gl", ".whl", ".bin"].
#
# What it does, all in the same call so the ratios compare like with like:
#   1. kiln bench --json (Vulkan, UNet and VAE f16, CFG batch 2) for SD 1.5 at 512 and SDXL at 1024;
#   2. scripts/bench/torch_reference.py with the same configs, dtype, batch and size on CUDA;
#   3. scripts/bench/compare.py: kiln ÷ torch per component;
#   4. SD 1.5 again with `--gpu-attention burn --gpu-conv burn` (burn's kernels as they are): the
#      before/after of kiln's GPU routes (the auto runs' JSON lists each shape they timed);
#   5. scripts/gpu/unet_check.py: kiln's f16 UNet output against PyTorch's on the same weights.
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
run() { echo "+ $*" >&2; timeout 240 "$@"; }
for spec in "sd15 512 20" "sdxl 1024 20"; do
  set -- $spec
  preset=$1 size=$2 steps=$3
  run $KILN bench --preset "$preset" --device vulkan --dtype f16 --vae-dtype f16 --width "$size" --height "$size" \
    --steps "$steps" --batch 1 --iters 5 --json >"$OUT/kiln-$preset.json" 2>"$OUT/kiln-$preset.log" || { status=1; tail -5 "$OUT/kiln-$preset.log"; }
  run python3 scripts/bench/torch_reference.py --preset "$preset" --device cuda --dtype fp16 --vae-dtype fp16 \
    --width "$size" --height "$size" --steps "$steps" --batch 1 --iters 5 >"$OUT/torch-$preset.json" 2>"$OUT/torch-$preset.log" || { status=1; tail -5 "$OUT/torch-$preset.log"; }
  python3 scripts/bench/compare.py "$OUT/kiln-$preset.json" "$OUT/torch-$preset.json" | tee "$OUT/ratios-$preset.txt" || status=1
done
# before/after for kiln's GPU routes (attention head dim, im2col conv): burn's kernels as they are
run $KILN bench --preset sd15 --device vulkan --dtype f16 --vae-dtype f16 --width 512 --height 512 \
  --steps 20 --batch 1 --iters 5 --gpu-attention burn --gpu-conv burn --json >"$OUT/kiln-sd15-burn.json" 2>"$OUT/kiln-sd15-burn.log" &&
  python3 scripts/bench/compare.py "$OUT/kiln-sd15-burn.json" "$OUT/torch-sd15.json" | tee "$OUT/ratios-sd15-burn.txt" || status=1
run python3 scripts/gpu/unet_check.py write /tmp/unet-check --preset sd15 --size 512 --device cuda &&
  run $KILN bench --unet-check /tmp/unet-check --device vulkan --dtype f16 &&
  python3 scripts/gpu/unet_check.py compare /tmp/unet-check | tee "$OUT/unet-check.json" || status=1
exit $status
