#!/usr/bin/env bash
# Draws the README's grid with the shipped demo model (assets/kiln-shapes) through the `kiln`
# CLI, one PNG per prompt in assets/readme/ (each PNG carries its parameters: `kiln info FILE`).
#
#     bash scripts/demo/grid.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}"
# the `kiln` binary the tests use (`cargo run -p kiln-cli` would resolve burn's features without
# the dev-dependencies and build it a second time)
cargo test -q -p kiln-cli --no-run 2>/dev/null
kiln="$CARGO_TARGET_DIR/debug/kiln"
out=assets/readme
mkdir -p "$out"
i=0
while IFS= read -r prompt; do
    "$kiln" generate --model assets/kiln-shapes --prompt "$prompt" --seed "$i" \
        --output "$out/$(printf %02d "$i").png" --overwrite
    i=$((i + 1))
done <<'PROMPTS'
a red circle on a blue background
a small green square in the top left on a white background
a large yellow star on a purple background
two orange triangles on a black background
three white circles on a green background
a blue triangle in the bottom right on a yellow background
a small black star in the top right on a red background
a large purple square on a red background
PROMPTS
