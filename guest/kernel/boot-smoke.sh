#!/usr/bin/env bash
# Boot smoke test for the img2vm guest kernel. Boots KERNEL (vmlinux through its PVH entry, or
# bzImage) under qemu-system-x86_64 -M microvm,acpi=off with a tiny root filesystem whose /init
# (a script run by the static busybox) prints a marker line and reboots; with -no-reboot qemu
# then exits by itself. The root filesystem is an initramfs (default) or, with --rootfs, an
# ext4 image on a virtio-mmio block device (root=/dev/vda).
#
# Passes (exit 0) if the marker appears, qemu exits on its own before the timeout, the guest
# saw the expected number of CPUs and its root is the expected filesystem. Exit 1 on failure,
# 2 on usage errors. One summary line goes to stderr; the console output to --log if given.
#
#   guest/kernel/boot-smoke.sh "$(guest/kernel/build.sh)/vmlinux"
#   guest/kernel/boot-smoke.sh --smp 2 --rootfs --log /tmp/console.log path/to/bzImage
#
# Uses KVM when /dev/kvm is usable, TCG otherwise (or as given by --accel). Needs
# qemu-system-x86, busybox-static, cpio and (for --rootfs) e2fsprogs; no root privileges.
set -euo pipefail

readonly MARKER=IMG2VM-SMOKE-OK
# The recommended guest command line (docs/kernel.md), minus what the runner adds per VM.
readonly CMDLINE='console=ttyS0 quiet reboot=k panic=-1 tsc=reliable no_timer_check'

usage() {
  cat <<EOF
usage: $(basename "$0") [options] KERNEL

  --rootfs       boot from an ext4 image on virtio-blk (virtio-mmio) instead of an initramfs
  --smp N        vCPUs to give the guest; the guest must report exactly N (default 1)
  --memory MB    guest memory (default 256)
  --timeout S    give up after S seconds (default 120)
  --accel A      kvm or tcg (default: kvm if /dev/kvm is usable, else tcg)
  --append ARGS  extra kernel command line arguments
  --log FILE     keep the guest console output in FILE (lines prefixed with host seconds)
  --busybox PATH static busybox to put in the guest (default /bin/busybox)
EOF
}

rootfs=false
smp=1
memory=256
timeout_s=120
accel=
append=
logfile=
busybox=/bin/busybox
kernel=
while (($#)); do
  case $1 in
    --rootfs)
      rootfs=true
      shift
      ;;
    --smp | --memory | --timeout | --accel | --append | --log | --busybox)
      (($# >= 2)) || {
        usage >&2
        exit 2
      }
      case $1 in
        --smp) smp=$2 ;;
        --memory) memory=$2 ;;
        --timeout) timeout_s=$2 ;;
        --accel) accel=$2 ;;
        --append) append=$2 ;;
        --log) logfile=$2 ;;
        --busybox) busybox=$2 ;;
      esac
      shift 2
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    -*)
      usage >&2
      exit 2
      ;;
    *)
      [[ -z $kernel ]] || {
        usage >&2
        exit 2
      }
      kernel=$1
      shift
      ;;
  esac
done
[[ -n $kernel ]] || {
  usage >&2
  exit 2
}

fail() {
  printf 'boot-smoke: FAIL: %s\n' "$*" >&2
  exit 1
}
[[ -r $kernel ]] || fail "kernel $kernel not readable"
[[ -x $busybox ]] || fail "busybox $busybox not found (apt-get install busybox-static)"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
if $rootfs; then
  command -v mke2fs >/dev/null || fail "mke2fs not found (apt-get install e2fsprogs)"
else
  command -v cpio >/dev/null || fail "cpio not found (apt-get install cpio)"
fi
if [[ -z $accel ]]; then
  if [[ -r /dev/kvm && -w /dev/kvm ]]; then accel=kvm; else accel=tcg; fi
fi

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

# The guest root: busybox, a few applet links, mount points and /init. No device nodes are
# needed (making them needs root): the kernel opens /dev/console from its built-in initramfs,
# or from the devtmpfs it mounts on /dev before running init from a disk root.
root=$tmp/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp}
cp -- "$busybox" "$root/bin/busybox"
for applet in sh mount cat grep reboot; do
  ln -s busybox "$root/bin/$applet"
done
cat >"$root/init" <<EOF
#!/bin/busybox sh
export PATH=/bin
mount -t proc proc /proc
grep -q ' /dev devtmpfs ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
fs=unknown
while read -r dev mnt type rest; do [ "\$mnt" = / ] && fs=\$type; done </proc/mounts
echo "$MARKER uptime=\$(cat /proc/uptime) root=\$fs cpus=\$(grep -c ^processor /proc/cpuinfo)"
# No ACPI means no power-off device: leave through the i8042 reset (reboot=k), which qemu's
# -no-reboot and the img2vm runner turn into an exit.
reboot -f
EOF
chmod 0755 "$root/init"

qemu_args=(-M "microvm,acpi=off" -accel "$accel" -smp "$smp" -m "$memory"
  -nodefaults -no-user-config -display none -serial stdio -no-reboot
  # The reset port the img2vm runner emulates (qemu's microvm has no i8042 of its own).
  -device i8042
  -kernel "$kernel")
cmdline=$CMDLINE
if $rootfs; then
  mke2fs -q -t ext4 -d "$root" -E root_owner=0:0 "$tmp/root.ext4" 64M >/dev/null
  # shellcheck disable=SC2054 # the commas belong to qemu option values
  qemu_args+=(-drive "id=d0,file=$tmp/root.ext4,format=raw,if=none"
    -device virtio-blk-device,drive=d0)
  cmdline+=' root=/dev/vda rw rootfstype=ext4 init=/init'
  want_root=ext4
else
  (cd "$root" && find . -print0 | cpio --null --create --format=newc --owner=0:0 --quiet) >"$tmp/initramfs.cpio"
  qemu_args+=(-initrd "$tmp/initramfs.cpio")
  want_root=rootfs
fi
cmdline+=${append:+ $append}

log=${logfile:-$tmp/console.log}
start=$(date +%s.%N)
# Each console line is prefixed with the host time since qemu started, so the time to init can
# be read off the marker line.
stamp() {
  local line
  while IFS= read -r line || [[ -n $line ]]; do
    printf '%s %s\n' "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%7.3f", b - a }')" "${line%$'\r'}"
  done
}
set +e
timeout --kill-after=5 "$timeout_s" qemu-system-x86_64 "${qemu_args[@]}" -append "$cmdline" </dev/null 2>&1 | stamp >"$log"
rc=${PIPESTATUS[0]}
set -e
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')

line=$(grep -a -m1 "^ *[0-9.]* $MARKER " "$log" || true)
if [[ -z $line ]]; then
  tail -n 30 -- "$log" >&2
  ((rc == 124 || rc == 137)) && fail "no marker; qemu did not exit within ${timeout_s}s"
  fail "no marker in the console output (qemu exit status $rc)"
fi
((rc == 124 || rc == 137)) && fail "marker seen but qemu did not exit by itself within ${timeout_s}s"
((rc == 0)) || fail "qemu exited with status $rc"
host_s=$(awk '{ print $1 }' <<<"$line")
cpus=${line##*cpus=}
[[ $cpus == "$smp" ]] || fail "guest saw $cpus CPUs, expected $smp"
got_root=${line##*root=}
got_root=${got_root%% *}
[[ $got_root == "$want_root" ]] || fail "guest root is $got_root, expected $want_root"
uptime=${line#*uptime=}
uptime=${uptime%% *}
printf 'boot-smoke: ok (%s, %s root, accel=%s, smp=%s): init ran at %ss guest uptime / %ss after qemu started; qemu exited after %ss\n' \
  "$(basename -- "$kernel")" "$want_root" "$accel" "$smp" "$uptime" "$host_s" "$elapsed" >&2
