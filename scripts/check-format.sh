#!/usr/bin/env bash
# Checks that the C++ lines changed since BASE are formatted as .clang-format says (git clang-format on the changed
# lines only: code nobody touched is not reformatted wholesale). BASE defaults to the commit that last changed
# .clang-format, so every line written under the current style is checked. Exit 1 with the diff to apply when not.
#   scripts/check-format.sh [BASE]        check
#   git clang-format BASE                 fix the same lines in place
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
base=${1:-$(git log -1 --format=%H -- .clang-format)}
if [ -z "$base" ] || ! git cat-file -e "$base^{commit}" 2>/dev/null; then
  if [ "$(git rev-parse --is-shallow-repository)" = true ] && [ -z "${1:-}" ]; then
    echo "check-format: not checked: this shallow clone lacks the commit that last changed .clang-format" >&2
    exit 0
  fi
  echo "check-format: no commit '${base:-?}' to compare with; give BASE" >&2
  exit 2
fi
output=$(git clang-format --diff --extensions cpp,hpp,cu,cuh "$base" -- 2>&1) || true
case "$output" in
  *"did not modify any files"* | *"no modified files to format"*)
    echo "check-format: the C++ lines changed since ${base:0:12} follow .clang-format"
    ;;
  *)
    echo "$output"
    echo "check-format: the lines above changed since ${base:0:12} differ from .clang-format (fix: git clang-format $base)" >&2
    exit 1
    ;;
esac
