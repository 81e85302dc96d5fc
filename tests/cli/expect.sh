#!/usr/bin/env bash
# Runs a command as a user would and checks how it ended:
#   expect.sh EXIT_CODE REGEX COMMAND [ARGS...]
# passes when the command exits with EXIT_CODE (a crash or signal never passes) and its combined stdout+stderr
# matches the extended regular expression REGEX (matched against the whole output: "." also matches newlines).
set -u
expected_code=$1 pattern=$2
shift 2
output=$("$@" 2>&1)
code=$?
printf '%s\n' "$output"
if [ "$code" -ne "$expected_code" ]; then
  echo "expect.sh: exit code $code, expected $expected_code" >&2
  exit 1
fi
if ! printf '%s\n' "$output" | grep -Ezq -- "$pattern"; then
  echo "expect.sh: output does not match /$pattern/" >&2
  exit 1
fi
