#!/usr/bin/env bash
# A build script for a CUDA machine without a package registry (the CUDA toolkit, PyTorch 2.11 and NCCL installed,
# apt unavailable). It unpacks the Debian packages that scripts/install-deps.sh would install from the .deb files in
# $HYBRIDIFF_OFFLINE_DEPS/debs into /tmp/hybridiff-deps, exports CMAKE_PREFIX_PATH and
# LD_LIBRARY_PATH for them, points the tests at a copy of the fixtures folder kept in the checkout, then configures
# a Release build for Hopper GPUs (sm_90) in a build folder of its own and builds it, printing only errors.
# Prepare on a machine with a registry: download those .deb files and their dependencies (apt-get download) into
# that folder, and copy the shared/fixtures folder from beside the checkout next to them.
# On the CUDA machine:  source scripts/gpu-build.sh   (exports the library paths for the commands that follow)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
offline=${HYBRIDIFF_OFFLINE_DEPS:?set HYBRIDIFF_OFFLINE_DEPS to the folder holding debs/ and shared/fixtures}
build_dir=${BUILD_DIR:-$root/build-cuda}
prefix=/tmp/hybridiff-deps
if [ ! -d "$prefix/usr/include/caf" ]; then
  for package in "$offline"/debs/*.deb; do dpkg -x "$package" "$prefix"; done
fi
export CMAKE_PREFIX_PATH="$prefix/usr"
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
# pkg-config (cpp-httplib's feature defines) from the unpacked packages, reading only their .pc files, whose
# /usr paths the sysroot moves under the prefix.
export PATH="$prefix/usr/bin:$PATH"
export PKG_CONFIG_LIBDIR="$prefix/usr/lib/x86_64-linux-gnu/pkgconfig:$prefix/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$prefix"
export HYBRIDIFF_SHARED="$offline/shared"
cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DHYBRIDIFF_SHARED_DIR="$offline/shared" \
  -DTORCH_CUDA_ARCH_LIST=9.0 >"$build_dir.configure.log" 2>&1 || { cat "$build_dir.configure.log"; exit 1; }
# GPU_BUILD_TARGETS (e.g. "hybridiff gpu_tests") limits the build; default: everything.
cmake --build "$build_dir" -j "$(nproc)" ${GPU_BUILD_TARGETS:+--target $GPU_BUILD_TARGETS} 2>&1 \
  | grep -E "error|warning: unused|Error" || true
test -x "$build_dir/hybridiff"
set +e +u +o pipefail
