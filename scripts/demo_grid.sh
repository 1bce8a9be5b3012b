#!/usr/bin/env bash
# Draws the README's grid with kiln and the shipped demo model (assets/kiln-shapes): 8 prompts,
# the first four combinations seen in training, the last four held out; seed 0, the model's
# sampler and 30 steps; composed 4×2 at 2× into assets/demo-grid.png (python3 with Pillow).
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}/debug/kiln}
PY=${PY:-$HOME/.venvs/ref/bin/python}
tmp=$(mktemp -d)
prompts=(
  "a red circle on a blue background"
  "a small green square in the top left on a yellow background"
  "a large purple star in the center on a white background"
  "three orange circles on a green background"
  "two yellow triangles on a black background"
  "a large blue triangle on a orange background"
  "a white circle in the bottom left on a green background"
  "a red square on a white background"
)
i=0
for p in "${prompts[@]}"; do
  "$KILN" generate --model assets/kiln-shapes --prompt "$p" --seed 0 --output "$tmp/$i.png" 2>/dev/null
  echo "$i: $p"
  i=$((i + 1))
done
"$PY" - "$tmp" <<'PY'
import sys
from PIL import Image
d = sys.argv[1]
grid = Image.new("RGB", (4 * 128 + 3 * 4, 2 * 128 + 4), "white")
for i in range(8):
    im = Image.open(f"{d}/{i}.png").resize((128, 128), Image.NEAREST)
    grid.paste(im, ((i % 4) * 132, (i // 4) * 132))
grid.save("assets/demo-grid.png")
PY
echo "wrote assets/demo-grid.png"
