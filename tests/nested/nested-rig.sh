#!/usr/bin/env bash
# The nested rig: runs programs inside an L1 Linux guest that has a working /dev/kvm, on hosts
# whose own /dev/kvm is missing or cannot run our guests (PVM). L1 is qemu-system-x86_64 with
# TCG and `-cpu max` (an emulated AMD CPU with SVM) booting Debian's cloud kernel, whose
# initramfs loads irqbypass, kvm and kvm-amd. It also holds tun and the nftables NAT modules:
# a command that needs them (the tap network tests) runs /bin/load-net-modules first.
#
#   nested-rig.sh base                       build (or find) the cached base; print its directory
#   nested-rig.sh userland                   build (or find) the cached Debian userland; print it
#   nested-rig.sh run [--userland busybox|debian] [--timeout SECONDS] [--memory MIB] [--smp N]
#                     [--file PATH]... -- CMD [ARG]...
#
# `run` copies each --file (or directory) into L1 at the same absolute path (with the shared libraries a
# dynamically linked program needs), runs CMD there with /dev/kvm present, prints what CMD
# wrote (stdout and stderr, merged) between the lines @@NESTED-BEGIN@@ and @@NESTED-END <rc>@@,
# and exits with CMD's exit status. Rig failures exit 200 (no kvm in L1: 201; timeout: 202;
# L1 died without reporting: 203) and say why on stderr.
#
# The base (kernel, busybox, modules, init) is cached under
# ${XDG_CACHE_HOME:-~/.cache}/img2vm/nested/<sha256 of its inputs>/.
#
# --userland busybox (the default) is the base alone: busybox in an initramfs, in RAM.
# --userland debian boots L1 on a Debian 12 userland for container engines: podman 4.3 (CNI
# networking, containernetworking-plugins), crun, conmon, catatonit, containerd 1.6 and ctr
# (with runc, which Debian's containerd depends on), skopeo, umoci, iproute2, nftables,
# iptables (nft), kmod, procps, busybox, curl, and the host cloud kernel's whole
# /lib/modules/<release> (overlay, veth, bridge, br_netfilter, tun, nf_tables ... load with
# modprobe, or on demand). `userland` builds it once with mmdebstrap from Debian's mirror
# (without documentation, manuals or translations) into an ext4 image, cached under
# .../nested/userland-<hash of the package list, the function that builds it, the kernel>/
# (about 4 minutes and 460 MiB here); `run` builds it first if needed. L1 boots from that image
# as a virtio disk with qemu's snapshot=on: writes go to a temporary file and the image never
# changes, so concurrent runs share it. Our init (not systemd) mounts proc, sys, devtmpfs,
# devpts, /dev/shm, mqueue, cgroup2 alone on /sys/fs/cgroup and a tmpfs on /run; the rest of the
# root (/tmp, /var/lib/containers, /var/lib/containerd) is the disk, about 4 GiB free. It sets
# the hostname nested-l1, brings lo up, loads kvm_amd, overlay, tun, veth, bridge, br_netfilter
# and nf_tables, and runs CMD as above (same markers, status and failure codes); --file's
# libraries that the userland has are its own. Podman works there with its defaults: it picks
# the cgroupfs manager, the file events logger, k8s-file logs, overlay storage and CNI by itself.
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
  if [ -f "$dir/base.cpio" ] && [ -f "$dir/debian.cpio" ] && [ -f "$dir/vmlinuz" ]; then
    printf '%s\n' "$dir"; return
  fi

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
  make_debian_boot "$tmp/debian" "$root/bin/nested-exit" "$release"
  (cd "$tmp/debian" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$tmp/debian.cpio"
  rm -rf "$tmp/debian"
  cp "$kernel" "$tmp/vmlinuz"
  printf 'kernel %s\nbusybox %s\n' "$kernel" "$busybox" >"$tmp/inputs"
  rm -rf "$root"
  trap - RETURN
  # Rename into place; if another run won the race, keep its copy.
  mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
  printf '%s\n' "$dir"
}

# The initramfs of `run --userland debian`, at $1 (busybox, nested-exit $2, kernel release $3).
# Stage 1 (/init, busybox) mounts the userland's disk (/dev/vda, ext4) read-write (qemu keeps
# the writes in a temporary snapshot) and a tmpfs on its /run, copies the --file tree (/payload
# in the initramfs) in, and switch_roots to stage 2 (/run/nested-rig/init, run by the
# userland's dash), which sets up what container engines expect and runs the command.
make_debian_boot() {
  local root=$1 exit_helper=$2 release=$3 m f
  mkdir -p "$root"/{bin,dev,proc,sys,lib/modules,payload}
  cp "$(command -v busybox)" "$root/bin/busybox"
  cp "$exit_helper" "$root/bin/nested-exit"
  for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_legacy_dev virtio/virtio_pci_modern_dev \
           virtio/virtio_pci block/virtio_blk; do
    for f in "/lib/modules/$release/kernel/drivers/$m".ko{,.xz,.zst} ""; do [ -e "$f" ] && break; done
    [ -n "$f" ] || die "missing module drivers/$m for $release"
    unpack_module "$f" "$root/lib/modules"
  done
  cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
exec </dev/ttyS0 >/dev/ttyS0 2>&1
fail() { echo "nested-rig stage 1: $*"; poweroff -f; }
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  insmod /lib/modules/$m.ko || fail "insmod $m failed"
done
i=0
while [ ! -b /dev/vda ]; do  # the disk appears once virtio-pci has probed it
  i=$((i + 1)); [ $i -le 600 ] || fail "no /dev/vda after 60 s"; sleep 0.1
done
mkdir /newroot
mount -t ext4 /dev/vda /newroot || fail "cannot mount /dev/vda"
mount -t tmpfs -o mode=755 tmpfs /newroot/run || fail "cannot mount a tmpfs on /run"
mkdir -p /newroot/run/nested-rig
cp /bin/nested-exit /newroot/run/nested-rig/nested-exit
cp /stage2 /newroot/run/nested-rig/init
(cd /payload && tar -cf - .) | tar -C /newroot -xpf - || fail "cannot copy the files in"
rm -rf /payload
for m in /dev /proc /sys; do mount --move $m /newroot$m || fail "cannot move $m"; done
exec switch_root /newroot /run/nested-rig/init
EOF
  cat >"$root/stage2" <<'EOF'
#!/bin/sh
# /dev, /proc and /sys come from stage 1, as do standard input and output (/dev/ttyS0).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mkdir -p /dev/pts /dev/shm /dev/mqueue /run/lock
mount -t devpts -o gid=5,mode=620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t mqueue mqueue /dev/mqueue
ln -s /proc/self/fd /dev/fd; ln -s fd/0 /dev/stdin; ln -s fd/1 /dev/stdout; ln -s fd/2 /dev/stderr
[ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup  # v2 alone, as podman and crun expect
chmod 1777 /tmp /var/tmp
hostname nested-l1; echo nested-l1 >/etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tnested-l1\n::1\tlocalhost\n' >/etc/hosts
ip link set lo up
# kvm-amd for /dev/kvm; then what container storage and networking use (others load on demand).
modprobe -a kvm_amd overlay tun veth bridge br_netfilter nf_tables || echo "nested-rig: modprobe failed"
if [ ! -c /dev/kvm ]; then
  echo "@@NESTED-NOKVM@@"; /run/nested-rig/nested-exit 201; busybox poweroff -f
fi
chmod 666 /dev/kvm
echo; echo "@@NESTED-BEGIN@@"
cd /nested
sh /nested/cmd
rc=$?
echo "@@NESTED-END $rc@@"
/run/nested-rig/nested-exit "$rc"
busybox poweroff -f
EOF
  chmod 755 "$root/init" "$root/stage2"
}

# unpack_module FILE DIR: FILE (.ko, .ko.xz or .ko.zst) as DIR/NAME.ko.
unpack_module() {
  local f=$1 name
  name=$(basename "$f")
  case "$f" in
    *.xz) xz -dc "$f" >"$2/${name%.xz}" ;;
    *.zst) zstd -qdc "$f" >"$2/${name%.zst}" ;;
    *) cp "$f" "$2/$name" ;;
  esac
}

# The Debian 12 userland of `run --userland debian`: what L1 needs to run container engines.
userland_packages="podman crun conmon catatonit containerd containernetworking-plugins
  golang-github-containers-common skopeo umoci mount iproute2 nftables iptables kmod procps
  busybox-static curl ca-certificates"

# Builds the userland tree at $1 with mmdebstrap: Debian 12 with $userland_packages, without
# documentation, manuals or translations, and the host cloud kernel's modules (release $2).
make_userland_tree() {
  local root=$1 release=$2 p args=()
  for p in /usr/share/doc/\* /usr/share/man/\* /usr/share/info/\* /usr/share/locale/\* \
           /usr/share/lintian/\* /usr/share/bash-completion/\* /usr/share/zsh/\* /usr/share/fish/\*; do
    args+=("--dpkgopt=path-exclude=$p")
  done
  args+=("--dpkgopt=path-include=/usr/share/doc/*/copyright")
  # shellcheck disable=SC2086  # the package list is split on purpose
  mmdebstrap --quiet --variant=essential --components=main --aptopt='Acquire::Retries "3"' \
    --aptopt='Acquire::Languages "none"' "${args[@]}" --include="$(echo $userland_packages | tr ' ' ,)" \
    bookworm "$root" || die "mmdebstrap failed"
  mkdir -p "$root/usr/lib/modules"
  cp -a "/lib/modules/$release" "$root/usr/lib/modules/" || die "cannot copy /lib/modules/$release"
  rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*
}

# Builds (or finds) the cached userland: an ext4 image of the tree (rootfs.img, sparse, with
# free space for what runs in L1) and the list of its paths. Keyed by the package list, this
# function and the one above (not the whole script: editing how L1 runs must not rebuild it)
# and the kernel.
build_userland() {
  local kernel release
  kernel=$(find_kernel)
  release=${kernel#/boot/vmlinuz-}
  [ -d "/lib/modules/$release" ] || die "no /lib/modules/$release (linux-image-cloud-amd64 incomplete?)"
  command -v mmdebstrap >/dev/null || die "mmdebstrap not found: install mmdebstrap (scripts/setup.sh)"
  command -v mke2fs >/dev/null || die "mke2fs not found: install e2fsprogs (scripts/setup.sh)"
  local key
  key=$( { sha256sum "$kernel" | cut -d' ' -f1; echo "$userland_packages"; declare -f make_userland_tree build_userland; } |
         sha256sum | cut -c1-16)
  local dir=$cache_root/userland-$key
  if [ -f "$dir/rootfs.img" ] && [ -f "$dir/paths" ]; then printf '%s\n' "$dir"; return; fi

  # One build at a time (parallel tests would each start one); a build that another process
  # finished while this one waited is used as it is. Each builds in a directory of its own and
  # renames it into place, so even without the lock no reader sees half a userland.
  mkdir -p "$cache_root"
  local lock
  exec {lock}>"$cache_root/.userland-$key.lock"
  flock "$lock"
  if [ -f "$dir/rootfs.img" ] && [ -f "$dir/paths" ]; then printf '%s\n' "$dir"; return; fi
  local tmp start=$SECONDS
  tmp=$(mktemp -d "$cache_root/.build-userland.XXXXXX")
  trap 'rm -rf --one-file-system "$tmp"' EXIT
  printf 'nested-rig: building the Debian userland in %s (several minutes, once)\n' "$tmp" >&2
  make_userland_tree "$tmp/root" "$release"
  (cd "$tmp/root" && find . -mindepth 1 | sed 's/^\.//' | LC_ALL=C sort) >"$tmp/paths"
  local used_mib
  used_mib=$(du -sm --apparent-size "$tmp/root" | cut -f1)
  # 4 GiB of room beyond the content for container storage and the --file tree; the file stays
  # sparse and runs never write to it (qemu's snapshot=on keeps their writes elsewhere).
  truncate -s "$((used_mib + used_mib / 4 + 4096))M" "$tmp/rootfs.img"
  mke2fs -q -t ext4 -O ^has_journal -m 0 -L nested-l1 -E root_owner=0:0 -d "$tmp/root" \
    "$tmp/rootfs.img" || die "mke2fs failed"
  rm -rf --one-file-system "$tmp/root"
  printf 'kernel %s\npackages %s\nbuilt in %d s, content %d MiB\n' "$kernel" \
    "$(tr -s ' \n' '  ' <<<"$userland_packages")" "$((SECONDS - start))" "$used_mib" >"$tmp/inputs"
  trap - EXIT
  mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
  printf 'nested-rig: userland ready in %d s: %s\n' "$((SECONDS - start))" "$dir" >&2
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
    local dest
    for lib in $(ldd "$path" 2>/dev/null | grep -o '/[^ ]*' || true); do
      dest=$lib
      if [ -n "$userland_paths" ]; then
        # Over the Debian userland (merged /usr, as the host): a library it has is its own; one
        # it lacks goes where /lib and /lib64 lead, which are symbolic links there.
        dest=$(readlink -f "$(dirname "$lib")")/$(basename "$lib")
        grep -qxF -e "$lib" -e "$dest" "$userland_paths" && continue
      fi
      [ -e "$root$dest" ] && continue
      mkdir -p "$root$(dirname "$dest")"
      strip --strip-debug -o "$root$dest" "$lib" 2>/dev/null || cp -L "$lib" "$root$dest"
    done
  fi
}

userland_paths=

cmd_run() {
  local timeout=300 memory=2048 smp=1 files=() userland=busybox
  while [ $# -gt 0 ]; do
    case "$1" in
      --userland) userland=$2; shift 2 ;;
      --timeout) timeout=$2; shift 2 ;;
      --memory) memory=$2; shift 2 ;;
      --smp) smp=$2; shift 2 ;;
      --file) files+=("$2"); shift 2 ;;
      --) shift; break ;;
      *) die "unknown option $1" ;;
    esac
  done
  [ $# -gt 0 ] || die "run: no command given"
  case "$userland" in busybox|debian) ;; *) die "--userland is busybox or debian, not $userland" ;; esac
  local base; base=$(build_base)
  local disk=() initrd=base.cpio
  if [ "$userland" = debian ]; then
    local ul; ul=$(build_userland)
    userland_paths=$ul/paths initrd=debian.cpio
    disk=(-drive "if=none,id=l1root,format=raw,snapshot=on,file=$ul/rootfs.img"
          -device "virtio-blk-pci,drive=l1root")
  fi
  local tmp; tmp=$(mktemp -d "${TMPDIR:-/tmp}/nested-run.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  local root=$tmp/root
  [ "$userland" = busybox ] || root=$tmp/root/payload
  mkdir -p "$root/nested"
  for f in "${files[@]}"; do add_file "$root" "$f"; done
  {
    printf 'exec'
    for a in "$@"; do printf " '%s'" "${a//\'/\'\\\'\'}"; done
    printf '\n'
  } >"$root/nested/cmd"
  (cd "$tmp/root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$tmp/run.cpio"
  cat "$base/$initrd" "$tmp/run.cpio" >"$tmp/initrd.cpio"
  local rc=0
  # no_timer_check: L1's kernel skips its check that the timer interrupt arrives through the
  # IO-APIC in time, which an emulated CPU on a loaded host can fail ("IO-APIC + timer doesn't
  # work!": a panic before L1 runs anything).
  timeout --foreground -k 5 "$timeout" qemu-system-x86_64 -accel tcg -cpu max -m "$memory" \
    -smp "$smp" -nographic -no-reboot -nodefaults -serial stdio -display none \
    -device isa-debug-exit,iobase=0xf4,iosize=1 \
    -kernel "$base/vmlinuz" -initrd "$tmp/initrd.cpio" "${disk[@]}" \
    -append "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init no_timer_check" \
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
  userland) build_userland ;;
  run) shift; cmd_run "$@" ;;
  *) die "usage: nested-rig.sh base | userland | run [--userland busybox|debian] [--timeout S] [--memory MIB] [--smp N] [--file PATH]... -- CMD [ARG]..." ;;
esac
