#!/usr/bin/env bash
# Configures and builds one CMake preset (default: "default"). Usage: scripts/build.sh [PRESET]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-default}
printf 'build: configuring and building preset %s\n' "$preset" >&2
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -- -j"$(nproc)"
# One compile_commands.json at the top for editors and clang tools.
if [ "$preset" = default ]; then ln -sf build/default/compile_commands.json compile_commands.json; fi
