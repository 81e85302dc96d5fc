#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang (ASan + UBSan) into build-fuzz/ and runs each one on a
# working copy of its seed corpus (tests/fuzz/corpus/<target>, plus what earlier runs found).
#   scripts/fuzz.sh                 smoke run: 20,000 runs per target from a fixed seed (what CI runs)
#   scripts/fuzz.sh -runs=1000000   each target for a million executions (the long run, before a release)
#   scripts/fuzz.sh -max_total_time=600 ...   any libFuzzer flags
#   FUZZ_TARGETS="config model_index" scripts/fuzz.sh ...   some of the targets
# A finding (crash, sanitizer report, an exception other than hybridiff::error) stops with a non-zero exit; the
# reproducer lands in build-fuzz/artifacts/. Leak checking is off (see below). Results: docs/hardening.md.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${FUZZ_BUILD_DIR:-$root/build-fuzz}
flags=("$@")
[ ${#flags[@]} -gt 0 ] || flags=(-seed=1 -runs=20000)
command -v clang++ >/dev/null || { echo "scripts/fuzz.sh: clang++ is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
mkdir -p "$build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DHYBRIDIFF_FUZZ=ON \
  -DHYBRIDIFF_WITH_CUDA=OFF >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)"
mkdir -p "$build/artifacts"
# The CAF seeds are serialised by the target itself (the wire format is CAF's).
mkdir -p "$build/corpus/caf_messages"
HYBRIDIFF_WRITE_SEEDS="$build/corpus/caf_messages" "$build/tests/fuzz/fuzz_caf_messages" -runs=0 >/dev/null 2>&1
for target in ${FUZZ_TARGETS:-safetensors config model_index clip_prompt clip_files caf_messages}; do
  corpus="$build/corpus/$target"
  mkdir -p "$corpus"
  [ ! -d "$root/tests/fuzz/corpus/$target" ] || cp -n "$root/tests/fuzz/corpus/$target/"* "$corpus/"
  echo "== fuzz_$target ${flags[*]}"
  # Leaks: libtorch and CAF keep process-lifetime allocations; the targets themselves are checked by ASan.
  log="$build/fuzz_$target.log"
  status=0
  ASAN_OPTIONS=detect_leaks=0 "$build/tests/fuzz/fuzz_$target" "${flags[@]}" -artifact_prefix="$build/artifacts/" \
    -print_final_stats=1 "$corpus" >"$log" 2>&1 || status=$?
  grep -E "^Done|stat::number_of_executed_units|stat::peak_rss_mb" "$log" || true
  if [ "$status" -ne 0 ]; then
    grep -E "what\(\)|ERROR|SUMMARY|artifact" "$log" >&2 || tail -30 "$log" >&2
    echo "fuzz_$target: a finding (exit $status); the full log is $log" >&2
    exit 1
  fi
done
