#!/usr/bin/env bash
# Builds hybridiff on the GPU machine (CUDA 13, PyTorch 2.11, NCCL, but no package registry) into build-gpu/,
# from Debian packages carried in .deps/debs, and points the tests at fixtures carried in .deps/shared.
# Prepare here (both folders are git-ignored, then carried):
#   ../shared/tools/gpu-deps.sh download .deps/debs && mkdir -p .deps/shared && cp -r ../shared/fixtures .deps/shared/
# There:  source scripts/gpu-build.sh   (exports the library paths for the commands that follow)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=/tmp/hybridiff-deps
if [ ! -d "$prefix/usr/include/caf" ]; then
  for package in "$root"/.deps/debs/*.deb; do dpkg -x "$package" "$prefix"; done
fi
export CMAKE_PREFIX_PATH="$prefix/usr"
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
export HYBRIDIFF_SHARED="$root/.deps/shared"
cmake -S "$root" -B "$root/build-gpu" -DCMAKE_BUILD_TYPE=Release -DHYBRIDIFF_SHARED_DIR="$root/.deps/shared" \
  -DTORCH_CUDA_ARCH_LIST=9.0 >"$root/build-gpu.configure.log" 2>&1 || { cat "$root/build-gpu.configure.log"; exit 1; }
# GPU_BUILD_TARGETS (e.g. "hybridiff gpu_tests") limits the build; default: everything.
cmake --build "$root/build-gpu" -j "$(nproc)" ${GPU_BUILD_TARGETS:+--target $GPU_BUILD_TARGETS} 2>&1 \
  | grep -E "error|warning: unused|Error" || true
test -x "$root/build-gpu/hybridiff"
set +e +u +o pipefail
