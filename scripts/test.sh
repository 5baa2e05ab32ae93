#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what it needs, builds the
# default, sanitizer and fuzz presets, runs every label in the first, the unit and integration
# labels under ASan+UBSan in the second, and each libFuzzer target for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build.sh default
scripts/build.sh sanitize
scripts/build.sh fuzz

# The guest kernel the boot tests use: built once from Debian's linux-source-6.1 and cached
# under ~/.cache/img2vm/kernel/<hash of its inputs>/ (about 5 minutes the first time).
IMG2VM_KERNEL=$(build/default/cmd/img2vm/img2vm kernel build)
export IMG2VM_KERNEL
printf 'test: guest kernel %s\n' "$IMG2VM_KERNEL" >&2

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# run_preset PRESET [CTEST ARGS]: the preset's tests. When some fail and every one of them is
# labelled nested (it boots Linux guests, in the nested rig on machines without usable KVM:
# tests/CMakeLists.txt), those alone run once more, and it is said; any other failure fails here.
run_preset() {
  local preset=$1 log failed nested t
  shift
  if ctest --preset "$preset" "$@"; then return 0; fi
  log=build/$preset/Testing/Temporary/LastTestsFailed.log
  [ -s "$log" ] || return 1
  failed=$(cut -d: -f2- "$log")
  nested=$(ctest --preset "$preset" -N -L nested | sed -n 's/^ *Test *#[0-9]*: //p')
  for t in $failed; do
    if ! grep -qxF "$t" <<<"$nested"; then
      printf 'test: %s failed; it is not a nested test, so it is not retried\n' "$t" >&2
      return 1
    fi
  done
  printf 'test: RETRYING, once, only the nested tests that failed: %s\n' "$(echo $failed)" >&2
  ctest --preset "$preset" --rerun-failed --output-on-failure
  printf 'test: the retry passed: %s failed once and passed the second time\n' "$(echo $failed)" >&2
}

printf 'test: running all tests (default build)\n' >&2
run_preset default -j"$(nproc)"
printf 'test: running unit and integration tests under ASan+UBSan\n' >&2
run_preset sanitize -j"$(nproc)"
printf 'test: running each fuzz target for a bounded time\n' >&2
ctest --preset fuzz
