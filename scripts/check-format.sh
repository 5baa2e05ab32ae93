#!/usr/bin/env bash
# The format gate: every C/C++ file git tracks is as clang-format (.clang-format) would write it.
# Prints the files that are not and exits 1; `scripts/check-format.sh --fix` rewrites them.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "check-format: clang-format is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
mapfile -t files < <(git ls-files '*.c' '*.cc' '*.cpp' '*.h' '*.hpp')
if [ "${1:-}" = --fix ]; then
  clang-format -i "${files[@]}"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ "${#bad[@]}" -ne 0 ]; then
  printf 'check-format: %d file(s) differ from clang-format (%s); run scripts/check-format.sh --fix:\n' \
    "${#bad[@]}" "$(clang-format --version)" >&2
  printf '  %s\n' "${bad[@]}" >&2
  exit 1
fi
printf 'check-format: %d files formatted\n' "${#files[@]}" >&2
