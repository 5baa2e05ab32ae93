#!/usr/bin/env bash
# Build the img2vm guest kernel (vmlinux with the PVH entry note, and bzImage) from Debian's
# linux-source-6.1 package and guest/kernel/microvm.config, and cache the result under
#   ${XDG_CACHE_HOME:-$HOME/.cache}/img2vm/kernel/<key>/
# where <key> is the first 16 hex digits of a sha256 over the inputs: the fragment, this
# script, the linux-source-6.1 package version and the first line of `gcc --version`.
#
# Progress goes to stderr; the only thing written to stdout is the cache directory, so
#   dir=$(guest/kernel/build.sh)
# works. A cached build is reused (no work at all) unless --force is given.
# See docs/kernel.md.
set -euo pipefail

readonly SOURCE_PACKAGE=linux-source-6.1
readonly SOURCE_TARBALL=/usr/src/linux-source-6.1.tar.xz
readonly KARCH=x86_64

log() { printf 'img2vm-kernel: %s\n' "$*" >&2; }
die() {
  printf 'img2vm-kernel: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  cat <<EOF
usage: $(basename "$0") [--print-path] [--force] [--verbose]

Build (or find in the cache) the img2vm guest kernel and print its cache directory.

  --print-path  print the cache directory if a complete build is cached and exit 0;
                exit 1 otherwise. Never builds.
  --force       rebuild even if a complete build is cached (replaces it).
  --verbose     stream the kernel build output to stderr (default: a log file, whose
                tail is shown if the build fails).
  -h, --help    this text.

The cache directory holds vmlinux, bzImage, config (the final .config), info.json and
.complete (written last).
EOF
}

print_path_only=false
force=false
verbose=false
while (($#)); do
  case $1 in
    --print-path) print_path_only=true ;;
    --force) force=true ;;
    --verbose) verbose=true ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
  shift
done

self=$(readlink -f -- "${BASH_SOURCE[0]}")
here=$(dirname -- "$self")
fragment=$here/microvm.config
[[ -r $fragment ]] || die "missing kconfig fragment $fragment"

# --- The cache key ---------------------------------------------------------------------
command -v dpkg-query >/dev/null || die "dpkg-query not found (a Debian system is required)"
source_version=$(dpkg-query -W -f='${Version}' "$SOURCE_PACKAGE" 2>/dev/null) ||
  die "package $SOURCE_PACKAGE is not installed (apt-get install $SOURCE_PACKAGE)"
[[ -n $source_version ]] || die "package $SOURCE_PACKAGE is not installed (apt-get install $SOURCE_PACKAGE)"
command -v gcc >/dev/null || die "gcc not found (apt-get install build-essential)"
gcc_version=$(gcc --version | sed -n 1p)

sha256_of() { sha256sum | cut -d' ' -f1; }
fragment_sha=$(sha256_of <"$fragment")
script_sha=$(sha256_of <"$self")
key=$(printf 'img2vm guest kernel v1\nfragment %s\nbuild.sh %s\nsource %s %s\ngcc %s\n' \
  "$fragment_sha" "$script_sha" "$SOURCE_PACKAGE" "$source_version" "$gcc_version" |
  sha256_of | cut -c1-16)

cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/img2vm/kernel
out=$cache_root/$key

is_complete() { [[ -f $1/.complete && -s $1/vmlinux && -s $1/bzImage && -s $1/config ]]; }

if $print_path_only; then
  if is_complete "$out"; then
    printf '%s\n' "$out"
    exit 0
  fi
  log "no cached build for key $key (run $(basename "$0") to build it)"
  exit 1
fi

if ! $force && is_complete "$out"; then
  log "cached: $out"
  printf '%s\n' "$out"
  exit 0
fi

# --- Build -------------------------------------------------------------------------------
for tool in make tar xz flex bison bc ld readelf perl; do
  command -v "$tool" >/dev/null || die "$tool not found; install the kernel build dependencies (see docs/kernel.md)"
done
[[ -f /usr/include/libelf.h ]] || die "libelf headers not found (apt-get install libelf-dev)"
[[ -r $SOURCE_TARBALL ]] || die "$SOURCE_TARBALL not found (apt-get install $SOURCE_PACKAGE)"

mkdir -p -- "$cache_root"
# One builder per key at a time; whoever waits re-checks the cache afterwards.
exec 9>"$cache_root/.$key.lock"
if ! flock -n 9; then
  log "another build of $key is running; waiting for it"
  flock 9
fi
if ! $force && is_complete "$out"; then
  log "cached (built meanwhile): $out"
  printf '%s\n' "$out"
  exit 0
fi

# Holding the lock, any earlier work directory for this key is debris from a killed build.
rm -rf -- "$cache_root/.build-$key".*
work=$(mktemp -d -- "$cache_root/.build-$key.XXXXXX")
child=
cleanup() { rm -rf -- "$work"; }
# Long steps run as background jobs that the script waits for, so a signal is handled at
# once: stop the step (make passes SIGTERM on to its compilers), then clean up via EXIT.
on_signal() {
  trap - INT TERM
  log "interrupted; stopping and cleaning up"
  if [[ -n $child ]]; then
    kill -TERM "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

src=$work/linux
stage=$work/out
buildlog=$work/build.log
mkdir -- "$src" "$stage"
: >"$buildlog"

# Runs "$@" with its output in the build log (and on stderr with --verbose); on failure shows
# the end of the log, keeps a copy next to the cache and exits.
run() {
  local rc=0 follower='' from
  from=$(($(stat -c %s -- "$buildlog") + 1))
  "$@" >>"$buildlog" 2>&1 </dev/null &
  child=$!
  if $verbose; then
    tail -c "+$from" -f --pid="$child" -- "$buildlog" >&2 &
    follower=$!
  fi
  wait "$child" || rc=$?
  child=
  if [[ -n $follower ]]; then wait "$follower" || true; fi
  if ((rc != 0)); then
    cp -- "$buildlog" "$cache_root/build-$key.failed.log"
    printf 'img2vm-kernel: --- last lines of the build log ---\n' >&2
    tail -n 40 -- "$buildlog" >&2
    die "'$*' failed (exit $rc); full log: $cache_root/build-$key.failed.log"
  fi
}

kmake() {
  run make -C "$src" ARCH="$KARCH" KBUILD_BUILD_USER=img2vm KBUILD_BUILD_HOST=img2vm "$@"
}

started=$SECONDS
log "building guest kernel $key ($SOURCE_PACKAGE $source_version, $gcc_version)"
log "work directory $work"

log "extracting $SOURCE_TARBALL"
run tar -xJf "$SOURCE_TARBALL" -C "$src" --strip-components=1
[[ -x $src/scripts/kconfig/merge_config.sh ]] || die "$SOURCE_TARBALL has no scripts/kconfig/merge_config.sh"

log "configuring: allnoconfig + $(basename "$fragment") (merge_config.sh -n), then olddefconfig"
# merge_config.sh runs `make allnoconfig` with the fragment as KCONFIG_ALLCONFIG, so every
# symbol the fragment does not mention (or that nothing it enables selects) is off.
run env -C "$src" ARCH="$KARCH" ./scripts/kconfig/merge_config.sh -n "$fragment"
kmake olddefconfig

log "verifying that every value the fragment sets survived"
# A fragment line "CONFIG_X=v" must appear verbatim; "# CONFIG_X is not set" must be either
# that line or absent (a symbol whose dependencies are off is not written at all).
if ! mismatches=$(awk '
  FNR == NR {
    if (match($0, /^CONFIG_[A-Za-z0-9_]+=/)) { want[substr($0, 1, RLENGTH - 1)] = substr($0, RLENGTH + 1) }
    else if ($0 ~ /^# CONFIG_[A-Za-z0-9_]+ is not set$/) { want[$2] = "n" }
    next
  }
  match($0, /^CONFIG_[A-Za-z0-9_]+=/) { have[substr($0, 1, RLENGTH - 1)] = substr($0, RLENGTH + 1) }
  END {
    bad = 0
    for (sym in want) {
      got = (sym in have) ? have[sym] : "n"
      if (got != want[sym]) { printf "  %s: fragment wants %s, final .config has %s\n", sym, want[sym], got; bad = 1 }
    }
    exit bad
  }' "$fragment" "$src/.config"); then
  printf '%s\n' "$mismatches" | sort >&2
  cp -- "$src/.config" "$cache_root/build-$key.failed.config"
  die "the final .config does not match the fragment (unmet dependencies?); it is saved as $cache_root/build-$key.failed.config"
fi

jobs=$(nproc)
log "compiling vmlinux and bzImage with -j$jobs (a few minutes)"
kmake -j"$jobs" vmlinux bzImage

# The runner (and qemu) boot vmlinux through its PVH entry: a Xen ELF note of type 0x12
# (XEN_ELFNOTE_PHYS32_ENTRY). Refuse to cache a vmlinux without it.
if ! readelf -n "$src/vmlinux" | awk '$1 == "Xen" && $0 ~ /0x00000012/ { found = 1 } END { exit !found }'; then
  die "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); is CONFIG_PVH=y?"
fi

release=$(make -s -C "$src" ARCH="$KARCH" kernelrelease 2>/dev/null | tail -n 1)
cp -- "$src/vmlinux" "$stage/vmlinux"
cp -- "$src/arch/x86/boot/bzImage" "$stage/bzImage"
cp -- "$src/.config" "$stage/config"

json_str() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}
size_of() { stat -c %s -- "$1"; }
{
  printf '{\n'
  printf '  "key": %s,\n' "$(json_str "$key")"
  printf '  "kernel_release": %s,\n' "$(json_str "$release")"
  printf '  "source_package": %s,\n' "$(json_str "$SOURCE_PACKAGE")"
  printf '  "source_version": %s,\n' "$(json_str "$source_version")"
  printf '  "gcc": %s,\n' "$(json_str "$gcc_version")"
  printf '  "fragment_sha256": %s,\n' "$(json_str "$fragment_sha")"
  printf '  "build_sh_sha256": %s,\n' "$(json_str "$script_sha")"
  printf '  "build_date": %s,\n' "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
  printf '  "build_seconds": %d,\n' "$((SECONDS - started))"
  printf '  "vmlinux_bytes": %d,\n' "$(size_of "$stage/vmlinux")"
  printf '  "bzImage_bytes": %d\n' "$(size_of "$stage/bzImage")"
  printf '}\n'
} >"$stage/info.json"
: >"$stage/.complete"

# Publish: the staged directory (with .complete already in it) is renamed into place, so a
# reader sees either no directory or a complete one. A stale or forced-over one goes first.
if [[ -e $out ]]; then
  mv -T -- "$out" "$work/old"
fi
mv -T -- "$stage" "$out"

log "done in $((SECONDS - started))s: $release, vmlinux $(size_of "$out/vmlinux") bytes, bzImage $(size_of "$out/bzImage") bytes"
printf '%s\n' "$out"
