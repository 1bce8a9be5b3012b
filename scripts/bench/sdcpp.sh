#!/usr/bin/env bash
# kiln and stable-diffusion.cpp side by side on this machine's CPU, in one run
# (docs/performance.md#kiln-and-stable-diffusioncpp-on-the-cpu):
# SD 1.5 with the same random f16 weights — an A1111 single file for sd.cpp
# (scripts/fixtures/single_file_full.py), converted to a diffusers folder for kiln (kiln convert
# --dtype f16) — at each size, Euler, STEPS steps with CFG 7.5, every core, RUNS runs with the
# engines alternating. sd.cpp is built twice from its public source at a pinned commit: stock
# (-DGGML_NATIVE=ON) and with -DGGML_LLAMAFILE=ON (its tinyBLAS matmuls).
#
#   cargo build -p kiln-cli && scripts/bench/sdcpp.sh [SIZE ...]      (default: 256 512)
#
# Needs: g++, cmake and GNU time (apt-get install cmake time), the reference venv (README,
# "Tests") to write the weights, ~8 GB under WORK. Whole process and peak RSS come from
# /usr/bin/time -v around `kiln generate` and `sd-cli`; kiln's UNet step and VAE decode from
# `kiln bench` on the same folder, sd.cpp's from its log ("sampling completed", "decode_first_stage
# completed"). Prints a table of medians. ENGINES="kiln" (or a subset of "kiln sdcpp-stock
# sdcpp-llamafile") and RESULTS=FILE time some engines only.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-$HOME/.venvs/ref/bin/python}
KILN=${KILN:-${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}/debug/kiln}
WORK=${WORK:-$HOME/.cache/kiln-sdcpp}
RUNS=${RUNS:-3}
STEPS=${STEPS:-4}
# which engines run (e.g. ENGINES=kiln to time a change of kiln's against an earlier results file)
ENGINES=${ENGINES:-kiln sdcpp-stock sdcpp-llamafile}
SIZES=${*:-256 512}
THREADS=$(nproc)
PROMPT="a lighthouse at dusk"

# stable-diffusion.cpp at commit 97d2990 (2026-08-19, "chore: format code") and its ggml submodule. Where
# GitHub cannot be reached, the same stable-diffusion.cpp sources (src/ identical to that commit)
# with their ggml as vendored by the PyPI sdist of stable-diffusion-cpp-python 0.4.7, checked by hash.
SDCPP_REPO=https://github.com/leejet/stable-diffusion.cpp
SDCPP_COMMIT=97d2990807fe6d558e395f8764198d7c7e7b411c
SDIST=stable_diffusion_cpp_python-0.4.7.tar.gz
SDIST_URL=https://files.pythonhosted.org/packages/b1/06/300aba9ac36e2166fbe45b4a29039a76f725ef08796f5472caf3e8c4e08d/$SDIST
SDIST_SHA256=998d1957260dd5ae4e18a8acc0c14b0a8757aaa9f96515197b6d5bbf46df9282

for tool in cmake g++ /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "sdcpp.sh needs $tool (apt-get install cmake g++ time)" >&2; exit 2; }
done
[ -x "$KILN" ] || { echo "no kiln binary at $KILN: cargo build -p kiln-cli first" >&2; exit 2; }
mkdir -p "$WORK/out"

src=$WORK/src
if [ ! -f "$src/CMakeLists.txt" ]; then
  rm -rf "$WORK/git"
  if timeout 300 git clone --quiet "$SDCPP_REPO" "$WORK/git" 2>/dev/null \
      && git -C "$WORK/git" checkout --quiet "$SDCPP_COMMIT" \
      && timeout 300 git -C "$WORK/git" submodule update --quiet --init --recursive; then
    mv "$WORK/git" "$src"
    echo "$SDCPP_REPO at $SDCPP_COMMIT" >"$WORK/source.txt"
  else
    rm -rf "$WORK/git"
    curl -fsSL "$SDIST_URL" -o "$WORK/$SDIST"
    echo "$SDIST_SHA256  $WORK/$SDIST" | sha256sum -c --quiet
    tar xzf "$WORK/$SDIST" -C "$WORK"
    mv "$WORK/${SDIST%.tar.gz}/vendor/stable-diffusion.cpp" "$src"
    rm -rf "$WORK/${SDIST%.tar.gz}"
    echo "stable-diffusion.cpp as vendored by $SDIST (sha256 $SDIST_SHA256)" >"$WORK/source.txt"
  fi
fi

build() {
  local name=$1; shift
  if [ ! -x "$WORK/$name/bin/sd-cli" ]; then
    echo "building sd.cpp ($name) ..." >&2
    cmake -S "$src" -B "$WORK/$name" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON "$@" >"$WORK/$name.cmake.log"
    cmake --build "$WORK/$name" --target sd-cli -j "$THREADS" >"$WORK/$name.build.log"
  fi
}
build sdcpp-stock -DGGML_LLAMAFILE=OFF
build sdcpp-llamafile -DGGML_LLAMAFILE=ON

if [ ! -f "$WORK/sd15.safetensors" ]; then
  echo "writing the random SD 1.5 weights ..." >&2
  "$PY" -c "import sys; sys.path.insert(0, 'scripts/fixtures'); import single_file_full as f; f.write_checkpoint('sd15', sys.argv[1])" "$WORK"
fi
if [ ! -f "$WORK/sd15/model_index.json" ]; then
  "$KILN" convert "$WORK/sd15.safetensors" "$WORK/sd15" --dtype f16 >/dev/null
fi

# COMMAND run under GNU time, its output in LOG: "wall_s peak_kib"
timed() {
  local log=$1; shift
  /usr/bin/time -v "$@" >"$log" 2>&1 || { echo "failed: $* (see $log)" >&2; tail -5 "$log" >&2; exit 1; }
  python3 - "$log" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
h, m, s = (["0"] + re.search(r"Elapsed \(wall clock\) time.*: ([\d:.]+)", t)[1].split(":"))[-3:]
print(int(h) * 3600 + int(m) * 60 + float(s), re.search(r"Maximum resident set size \(kbytes\): (\d+)", t)[1])
EOF
}
# one run of an engine at a size: "wall_s peak_kib step_s vae_s load_s"
run_kiln() {
  local size=$1 out=$2 wall rss step vae load
  read -r wall rss < <(timed "$out-kiln.log" "$KILN" generate --model "$WORK/sd15" --prompt "$PROMPT" --width "$size" --height "$size" \
    --steps "$STEPS" --scheduler euler --guidance-scale 7.5 --seed 0 --output "$out-kiln.png" --overwrite)
  "$KILN" bench --model "$WORK/sd15" --width "$size" --height "$size" --steps "$STEPS" --iters 1 --json >"$out-kiln-bench.json"
  read -r step vae load < <(python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print(r['unet_step']['mean_s'], r['vae_decode']['mean_s'], r['load_seconds'])" "$out-kiln-bench.json")
  echo "$wall $rss $step $vae $load"
}
run_sdcpp() {
  local engine=$1 size=$2 out=$3 wall rss
  read -r wall rss < <(timed "$out-$engine.log" "$WORK/$engine/bin/sd-cli" -m "$WORK/sd15.safetensors" -p "$PROMPT" -W "$size" -H "$size" \
    --steps "$STEPS" --sampling-method euler --cfg-scale 7.5 -s 0 -t "$THREADS" -o "$out-$engine.png")
  python3 - "$out-$engine.log" "$STEPS" "$wall" "$rss" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
step = float(re.findall(r"sampling completed, taking ([\d.]+)", t)[-1]) / int(sys.argv[2])
print(sys.argv[3], sys.argv[4], step, re.findall(r"decode_first_stage completed, taking ([\d.]+)", t)[-1], 0)
EOF
}
results=${RESULTS:-$WORK/results.txt}
: >"$results"
for size in $SIZES; do
  for run in $(seq "$RUNS"); do
    for engine in $ENGINES; do
      out=$WORK/out/$size-$run
      if [ "$engine" = kiln ]; then line=$(run_kiln "$size" "$out"); else line=$(run_sdcpp "$engine" "$size" "$out"); fi
      echo "$engine $size $run $line" >>"$results"
    done
  done
done

echo "$(date -u +%F)  $(lscpu | grep 'Model name' | sed 's/ \+/ /g;s/Model name: //')  ($THREADS threads); sd.cpp: $(cat "$WORK/source.txt")"
python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(engine, size, i):
    values = [float(r[i]) for r in rows if r[0] == engine and r[1] == size]
    return statistics.median(values) if values else float("nan")
for size in dict.fromkeys(r[1] for r in rows):
    print(f"\n{size}x{size}, medians of {sum(1 for r in rows if r[0] == 'kiln' and r[1] == size)} runs")
    print(f"| | kiln | sd.cpp (stock) | sd.cpp (LLAMAFILE) | kiln ÷ stock | kiln ÷ LLAMAFILE |\n|---|---|---|---|---|---|")
    for name, i, unit, scale in [("UNet CFG step", 5, "s", 1), ("VAE decode", 6, "s", 1), ("whole process", 3, "s", 1), ("peak RSS", 4, "GiB", 1 / (1 << 20))]:
        k, s, l = (med(e, size, i) * scale for e in ("kiln", "sdcpp-stock", "sdcpp-llamafile"))
        print(f"| {name} | {k:.2f} {unit} | {s:.2f} {unit} | {l:.2f} {unit} | {k / s:.2f} | {k / l:.2f} |")
    print(f"kiln load (kiln bench): {med('kiln', size, 7):.2f} s")
EOF
