#!/usr/bin/env bash
# kiln serve's throughput: images per second with 1, 4 and 16 concurrent clients on the demo model
# (64x64), through /v1/images/generations; the figures go in docs/performance.md#kiln-serve.
# Usage: scripts/bench/serve.sh [STEPS (default 30)] [REQUESTS per level (default 64)]
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${1:-30}
requests=${2:-64}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}"
# the dev profile README's commands build (dependencies at opt-level 3; a release build of burn's
# tree would take another ~25 minutes on 2 cores)
cargo build -q -p kiln-cli
kiln="$CARGO_TARGET_DIR/debug/kiln"
log=$(mktemp)
"$kiln" serve --model assets/kiln-shapes --port 0 --queue-size 64 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 600); do grep -q "^listening on" "$log" && break; sleep 0.1; done
base=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$log" | head -1)
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/readyz")" = 200 ]; do sleep 0.2; done
body="{\"prompt\": \"a red circle on a blue background\", \"size\": \"64x64\", \"steps\": $steps, \"response_format\": \"b64_json\"}"
one() { curl -s -o /dev/null -w '%{http_code}\n' "$base/v1/images/generations" -H 'content-type: application/json' -d "$body"; }
export -f one; export base body
echo "kiln serve, demo model 64x64, $steps steps, $requests requests per level; $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# one request first: the steady state, not the first use
one >/dev/null
# the reference, measured in the same run: the same picture from `kiln generate`, a process per
# image (loading the model each time, as a script calling the CLI would)
tmp=$(mktemp -d)
start=$(date +%s.%N)
for i in $(seq 8); do
    "$kiln" generate --model assets/kiln-shapes --prompt "a red circle on a blue background" --width 64 --height 64 \
        --steps "$steps" --output "$tmp/$i.png" 2>/dev/null
done
end=$(date +%s.%N)
rm -rf "$tmp"
cli=$(awk -v s="$start" -v e="$end" 'BEGIN { print (e - s) / 8 }')
awk -v t="$cli" 'BEGIN { printf "kiln generate: %.3f s per image (a process each)\n", t }'
for clients in 1 4 16; do
    start=$(date +%s.%N)
    codes=$(seq "$requests" | xargs -P "$clients" -I{} bash -c one | sort | uniq -c | xargs)
    end=$(date +%s.%N)
    awk -v c="$clients" -v n="$requests" -v s="$start" -v e="$end" -v codes="$codes" -v cli="$cli" \
        'BEGIN { printf "%2d clients: %.2f images/s (%.3f s per image, %.2fx kiln generate (a process per image); statuses: %s)\n", c, n / (e - s), (e - s) / n, cli * n / (e - s), codes }'
done
