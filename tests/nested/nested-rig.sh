#!/usr/bin/env bash
# The nested rig: runs programs inside an L1 Linux guest that has a working /dev/kvm, on hosts
# whose own /dev/kvm is missing or cannot run our guests (PVM). L1 is qemu-system-x86_64 with
# TCG and `-cpu max` (an emulated AMD CPU with SVM) booting Debian's cloud kernel, whose
# initramfs loads irqbypass, kvm and kvm-amd. It also holds tun and the nftables NAT modules:
# a command that needs them (the tap network tests) runs /bin/load-net-modules first.
#
#   nested-rig.sh base                       build (or find) the cached base; print its directory
#   nested-rig.sh run [--timeout SECONDS] [--memory MIB] [--smp N] [--file PATH]... -- CMD [ARG]...
#
# `run` copies each --file (or directory) into L1 at the same absolute path (with the shared libraries a
# dynamically linked program needs), runs CMD there with /dev/kvm present, prints what CMD
# wrote (stdout and stderr, merged) between the lines @@NESTED-BEGIN@@ and @@NESTED-END <rc>@@,
# and exits with CMD's exit status. Rig failures exit 200 (no kvm in L1: 201; timeout: 202;
# L1 died without reporting: 203) and say why on stderr.
#
# The base (kernel, busybox, modules, init) is cached under
# ${XDG_CACHE_HOME:-~/.cache}/img2vm/nested/<sha256 of its inputs>/.
set -euo pipefail

die() { printf 'nested-rig: %s\n' "$*" >&2; exit "${2:-200}"; }

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/img2vm/nested

find_kernel() {
  # Newest Debian cloud kernel installed (package linux-image-cloud-amd64).
  local k
  k=$(ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n1 || true)
  [ -n "$k" ] || die "no /boot/vmlinuz-*-cloud-amd64: install linux-image-cloud-amd64 (scripts/setup.sh)"
  printf '%s\n' "$k"
}

# tun and what nftables needs for NAT, conntrack and fib matches, in load order.
net_modules="lib/libcrc32c.ko net/netfilter/nfnetlink.ko net/netfilter/nf_tables.ko
  net/ipv4/netfilter/nf_defrag_ipv4.ko net/ipv6/netfilter/nf_defrag_ipv6.ko net/netfilter/nf_conntrack.ko
  net/netfilter/nf_nat.ko net/netfilter/nft_chain_nat.ko net/netfilter/nft_nat.ko net/netfilter/nft_masq.ko
  net/netfilter/nft_ct.ko net/netfilter/nft_fib.ko net/ipv4/netfilter/nft_fib_ipv4.ko drivers/net/tun.ko"

build_base() {
  local kernel release moddir busybox
  kernel=$(find_kernel)
  release=${kernel#/boot/vmlinuz-}
  moddir=/lib/modules/$release/kernel
  busybox=$(command -v busybox || true)
  [ -n "$busybox" ] || die "busybox not found: install busybox-static"
  if ldd "$busybox" >/dev/null 2>&1; then die "$busybox is dynamically linked: install busybox-static"; fi
  local mods=()
  for m in virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko arch/x86/kvm/kvm-amd.ko $net_modules; do
    local f
    f=$(ls "$moddir/$m" "$moddir/$m.xz" "$moddir/$m.zst" 2>/dev/null | head -n1 || true)
    [ -n "$f" ] || die "missing module $moddir/$m (linux-image-cloud-amd64 incomplete?)"
    mods+=("$f")
  done
  local key
  key=$( { sha256sum "$kernel" "$busybox" "${mods[@]}" "$script_dir/nested-rig.sh" \
           "$script_dir/nested_exit.c" | cut -d' ' -f1; } | sha256sum | cut -c1-16)
  local dir=$cache_root/$key
  if [ -f "$dir/base.cpio" ] && [ -f "$dir/vmlinuz" ]; then printf '%s\n' "$dir"; return; fi

  mkdir -p "$cache_root"
  local tmp
  tmp=$(mktemp -d "$cache_root/.build.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  local root=$tmp/root
  mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules,nested}
  cp "$busybox" "$root/bin/busybox"
  for f in "${mods[@]}"; do
    local name; name=$(basename "$f")
    case "$f" in
      *.xz) xz -dc "$f" >"$root/lib/modules/${name%.xz}" ;;
      *.zst) zstd -qdc "$f" >"$root/lib/modules/${name%.zst}" ;;
      *) cp "$f" "$root/lib/modules/$name" ;;
    esac
  done
  gcc -static -Os -o "$root/bin/nested-exit" "$script_dir/nested_exit.c" ||
    die "cannot build nested-exit helper"
  cat >"$root/init" <<'EOF'
#!/bin/busybox sh
# The initramfs root cannot be pivot_root(2)ed away from, which sandboxes such as virtiofsd's do:
# first move everything into a tmpfs and make that the root (moved file by file, so the memory
# in use stays about the same), then start again there.
if [ ! -e /.in-tmpfs ]; then
  /bin/busybox mkdir /newroot
  /bin/busybox mount -t tmpfs -o size=90% tmpfs /newroot
  /bin/busybox mv /bin /newroot/
  for f in /* /.[!.]*; do
    case "$f" in /newroot|/proc|/sys|/dev|'/.[!.]*') continue ;; esac
    # switch_root looks for the init before it changes root: it stays here too.
    [ "$f" = /init ] && { /newroot/bin/busybox cp -a /init /newroot/init; continue; }
    /newroot/bin/busybox mv "$f" /newroot/
  done
  /newroot/bin/busybox mkdir -p /newroot/proc /newroot/sys /newroot/dev
  /newroot/bin/busybox touch /newroot/.in-tmpfs
  exec /newroot/bin/busybox switch_root /newroot /init
fi
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/sbin:/usr/sbin HOME=/root
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts; mount -t devpts -o ptmxmode=0666 devpts /dev/pts
mkdir -p /root /tmp; chmod 1777 /tmp
exec </dev/ttyS0 >/dev/ttyS0 2>&1
for m in irqbypass kvm kvm-amd; do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
if [ ! -c /dev/kvm ]; then
  echo "@@NESTED-NOKVM@@"; /bin/nested-exit 201; poweroff -f
fi
echo; echo "@@NESTED-BEGIN@@"
cd /nested
sh /nested/cmd
rc=$?
echo "@@NESTED-END $rc@@"
/bin/nested-exit "$rc"
poweroff -f
EOF
  chmod 755 "$root/init"
  {
    echo '#!/bin/busybox sh'
    for m in $net_modules; do
      m=$(basename "$m")
      echo "insmod /lib/modules/$m || { echo 'load-net-modules: insmod $m failed' >&2; exit 1; }"
    done
  } >"$root/bin/load-net-modules"
  chmod 755 "$root/bin/load-net-modules"
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$tmp/base.cpio"
  cp "$kernel" "$tmp/vmlinuz"
  printf 'kernel %s\nbusybox %s\n' "$kernel" "$busybox" >"$tmp/inputs"
  rm -rf "$root"
  trap - RETURN
  # Rename into place; if another run won the race, keep its copy.
  mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
  printf '%s\n' "$dir"
}

# Copies PATH (and, for a dynamic ELF, its interpreter and libraries) under ROOT.
add_file() {
  local root=$1 path=$2
  path=$(readlink -f "$path")
  [ -e "$path" ] || die "no such file: $2"
  mkdir -p "$root$(dirname "$path")"
  if [ -d "$path" ]; then  # a directory goes in whole, as it is (sparse files stay sparse)
    cp -a --sparse=always "$path" "$root$path"
    return
  fi
  # ELF files lose their debug info on the way in: L1 loads them faster (TCG is slow).
  if [ "$(head -c4 "$path" | tail -c3)" = "ELF" ]; then
    strip --strip-debug -o "$root$path" "$path" 2>/dev/null || cp -a "$path" "$root$path"
    chmod --reference="$path" "$root$path"
  else
    cp -a "$path" "$root$path"
  fi
  if ldd "$path" >/dev/null 2>&1; then  # a dynamic executable or library
    local lib
    for lib in $(ldd "$path" 2>/dev/null | grep -o '/[^ ]*' || true); do
      [ -e "$root$lib" ] && continue
      mkdir -p "$root$(dirname "$lib")"
      strip --strip-debug -o "$root$lib" "$lib" 2>/dev/null || cp -L "$lib" "$root$lib"
    done
  fi
}

cmd_run() {
  local timeout=300 memory=2048 smp=1 files=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --timeout) timeout=$2; shift 2 ;;
      --memory) memory=$2; shift 2 ;;
      --smp) smp=$2; shift 2 ;;
      --file) files+=("$2"); shift 2 ;;
      --) shift; break ;;
      *) die "unknown option $1" ;;
    esac
  done
  [ $# -gt 0 ] || die "run: no command given"
  local base; base=$(build_base)
  local tmp; tmp=$(mktemp -d "${TMPDIR:-/tmp}/nested-run.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  local root=$tmp/root
  mkdir -p "$root/nested"
  for f in "${files[@]}"; do add_file "$root" "$f"; done
  {
    printf 'exec'
    for a in "$@"; do printf " '%s'" "${a//\'/\'\\\'\'}"; done
    printf '\n'
  } >"$root/nested/cmd"
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$tmp/run.cpio"
  cat "$base/base.cpio" "$tmp/run.cpio" >"$tmp/initrd.cpio"
  local rc=0
  timeout --foreground -k 5 "$timeout" qemu-system-x86_64 -accel tcg -cpu max -m "$memory" \
    -smp "$smp" -nographic -no-reboot -nodefaults -serial stdio -display none \
    -device isa-debug-exit,iobase=0xf4,iosize=1 \
    -kernel "$base/vmlinuz" -initrd "$tmp/initrd.cpio" \
    -append "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init" \
    </dev/null >"$tmp/serial" 2>"$tmp/qemu.err" || rc=$?
  tr -d '\r' <"$tmp/serial" >"$tmp/out"
  [ -z "${NESTED_RIG_DEBUG:-}" ] || cat "$tmp/out" >&2
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    cat "$tmp/out" >&2
    die "timed out after ${timeout}s" 202
  fi
  if grep -q '^@@NESTED-NOKVM@@' "$tmp/out"; then
    cat "$tmp/out" >&2; die "L1 has no /dev/kvm (kvm-amd did not load)" 201
  fi
  local end
  end=$(grep -a '^@@NESTED-END [0-9]*@@' "$tmp/out" | tail -n1 | sed 's/^@@NESTED-END \([0-9]*\)@@/\1/' || true)
  if [ -z "$end" ]; then
    cat "$tmp/out" "$tmp/qemu.err" >&2
    die "L1 ended without reporting (qemu exit $rc)" 203
  fi
  # Everything between the markers is the command's output.
  sed -n '/@@NESTED-BEGIN@@$/,/^@@NESTED-END [0-9]*@@$/p' "$tmp/out" | sed '1d;$d'
  echo "@@NESTED-END $end@@"
  exit "$end"
}

case "${1:-}" in
  base) build_base ;;
  run) shift; cmd_run "$@" ;;
  *) die "usage: nested-rig.sh base | run [--timeout S] [--memory MIB] [--smp N] [--file PATH]... -- CMD [ARG]..." ;;
esac
