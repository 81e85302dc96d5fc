#!/usr/bin/env bash
# Builds hybridiff with sanitizers (gcc) and runs the CPU tests under them:
#   scripts/sanitize.sh address   ASan + UBSan, the whole suite except the gpu label (build-asan/)
#   scripts/sanitize.sh thread    TSan, the actor/runtime tests and the CLI's parallel modes (build-tsan/)
#   CAF_PREFIX=DIR scripts/sanitize.sh thread   ... against a CAF 0.17.6 built with -fsanitize=thread and
#                                                installed in DIR (libcaf_core only; see docs/hardening.md)
# Exits non-zero on any report. The libraries from Debian and the torch wheel are not instrumented: ASan still
# checks every access made by our code. TSan cannot see the synchronisation inside an uninstrumented CAF (its
# mailboxes and work-stealing queues use atomics), so against Debian's CAF every message hand-over is reported as
# a race: give it an instrumented CAF with CAF_PREFIX.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kind=${1:?usage: scripts/sanitize.sh address|thread}
case "$kind" in
  address) build=$root/build-asan tests=(-LE gpu) ;;
  thread) build=$root/build-tsan tests=(-R "ParallelGeneration|GenerateCli.ParallelModes") ;;
  *) echo "scripts/sanitize.sh: '$kind': use address or thread" >&2; exit 2 ;;
esac
caf=()
if [ -n "${CAF_PREFIX:-}" ]; then
  # caf::io is not used by these tests; Debian's satisfies the finder.
  caf=(-DCAF_INCLUDE_DIR="$CAF_PREFIX/include" -DCAF_CORE_LIBRARY="$CAF_PREFIX/lib/libcaf_core.so"
       -DCAF_IO_LIBRARY=/usr/lib/x86_64-linux-gnu/libcaf_io.so)
fi
mkdir -p "$build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHYBRIDIFF_SANITIZE="$kind" -DHYBRIDIFF_WITH_CUDA=OFF \
  "${caf[@]}" >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)"
suppressions=$root/scripts/sanitizers
# Leak checking is off: libtorch, CAF and CPython-free torch keep allocations for the process lifetime.
# allocator_may_return_null: an allocation that cannot fit fails as it does without ASan (the OOM tests need it).
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$suppressions/ubsan.supp
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$suppressions/tsan.supp
export OMP_NUM_THREADS=1  # libgomp's uninstrumented thread pool is invisible to TSan
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" --timeout 900 "${tests[@]}"
