#!/usr/bin/env bash
# Gathers what scripts/gpu/bench.sh needs on the device machine, in git-ignored folders of the
# repo root: .gl/ (the Vulkan loader and GL/EGL .debs), .whl/ (diffusers and what the device's
# Python lacks), .bin/ (the kiln binary built here for x86-64, stripped and gzipped to fit the
# device tool's 64 MiB carry limit).
set -euo pipefail
cd "$(dirname "$0")/../.."
for d in .gl .whl .bin; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >>.git/info/exclude; done
mkdir -p .gl .whl .bin /tmp/amd64/partial
if ! ls .gl/libvulkan1*.deb >/dev/null 2>&1; then
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl \
  diffusers==0.42.1 importlib_metadata
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}
# the same selection as CI (`cargo test --workspace`), so no second feature set of burn is built
cargo test --workspace --no-run
rm -f .bin/*
strip -o .bin/kiln "$CARGO_TARGET_DIR/debug/kiln"
gzip -9 .bin/kiln
ls -la .gl .whl .bin
