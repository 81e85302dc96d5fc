#!/usr/bin/env bash
# Installs the dependencies (scripts/install-deps.sh), configures and builds hybridiff into build/ (or $BUILD_DIR).
# Extra arguments go to CMake's configure step, e.g. scripts/build.sh -DHYBRIDIFF_WITH_CUDA=OFF.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${BUILD_DIR:-$root/build}
"$root/scripts/install-deps.sh"
mkdir -p "$build_dir"
cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" "$@" >"$build_dir/configure.log" 2>&1 \
  || { cat "$build_dir/configure.log"; exit 1; }
cmake --build "$build_dir" -j "$(nproc)"
