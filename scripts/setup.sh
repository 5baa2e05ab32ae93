#!/usr/bin/env bash
# Installs everything img2vm needs on Debian 12, idempotently: the build toolchain, the
# libraries it links, and the real programs its tests talk to. Run as root or with sudo.
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build pkgconf git ca-certificates clang clang-format
  libclang-rt-14-dev   # libFuzzer and sanitizer runtimes for the fuzz preset
  # libraries img2vm links
  libarchive-dev libssl-dev nlohmann-json3-dev libcurl4-openssl-dev libext2fs-dev
  libcli11-dev libzstd-dev libcrypt-dev libseccomp-dev googletest libgtest-dev libgmock-dev
  libslirp-dev libglib2.0-dev   # user-mode networking (slirp.pc requires glib-2.0.pc)
  libnftables-dev   # the tap backend's NAT and forwarding rules
  libnl-3-dev libnl-route-3-dev   # a container engine's network namespace: tap, tc mirred (net_netns)
  libisal-dev   # isa-l: gzip layers are inflated with it
  zlib1g-dev   # the gzip tests write their streams with zlib (and libarchive.a's gzip filter)
  liblz4-dev libbz2-dev liblzma-dev nettle-dev libacl1-dev libxml2-dev   # what libarchive.a needs (Dependencies.cmake); nettle: SHA-256 too
  # real components the tests use
  nftables iproute2   # nft and ip, to look at what the tap backend set up (tests)
  docker-registry skopeo umoci qemu-system-x86 e2fsprogs openssl curl busybox-static python3
  musl-tools   # musl-gcc: a static musl program for the "scratch image" run test
  linux-image-cloud-amd64   # the L1 kernel (kvm-amd) of the nested KVM test rig, tests/nested
  mmdebstrap   # builds the rig's Debian userland with container engines (run --userland debian)
  isal   # igzip: the decompression floor bench/convert compares against
  # the guest kernel build
  linux-source-6.1 flex bison bc libelf-dev cpio xz-utils
)

say() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  say "need root or sudo to install Debian packages"; exit 1
fi

missing=()
for p in "${packages[@]}"; do
  # dpkg-query prints "install ok installed" for an installed package.
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  say "all ${#packages[@]} Debian packages are already installed"
else
  say "installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  say "packages installed"
fi

# The Debian package starts its own registry as a service on :5000 where an init system runs;
# img2vm never uses that one (tests and the demo start their own on free ports).
