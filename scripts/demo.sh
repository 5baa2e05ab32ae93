#!/usr/bin/env bash
# The main job from a fresh Debian 12 machine: install, build, start a local registry, push a
# demo image to it, and take img2vm as far as it goes today. Later issues extend the end of
# this script to `img2vm pull` and `img2vm run` of the demo image.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build.sh default
bin=build/default/cmd/img2vm/img2vm
say() { printf '\ndemo: %s\n' "$*" >&2; }

say "img2vm --version"
"$bin" --version
say "img2vm info"
"$bin" info

# A local registry on a free loopback port, with its storage in a temporary directory, both
# removed on exit. There is no internet here, so the demo image is made locally from
# busybox-static and pushed with skopeo, as any registry client would see it.
work=$(mktemp -d "${TMPDIR:-/tmp}/img2vm-demo.XXXXXX")
registry_pid=
cleanup() {
  [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/storage}}
http: {addr: "127.0.0.1:$port"}
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
say "local registry on 127.0.0.1:$port"

mkdir -p "$work/rootfs/bin"
cp /bin/busybox "$work/rootfs/bin/busybox"
ln -s busybox "$work/rootfs/bin/sh"
tar -C "$work/rootfs" --numeric-owner --owner=0 --group=0 -czf "$work/layer.tar.gz" .
umoci init --layout "$work/oci" >/dev/null
umoci new --image "$work/oci:demo" >/dev/null
umoci raw add-layer --image "$work/oci:demo" "$work/layer.tar.gz" >/dev/null
umoci config --image "$work/oci:demo" --config.cmd /bin/sh --config.cmd -c \
  --config.cmd 'echo "Hello from img2vm demo running $(uname -m)"' >/dev/null
skopeo --insecure-policy copy --dest-tls-verify=false "oci:$work/oci:demo" \
  "docker://127.0.0.1:$port/demo/hello:latest" >/dev/null
say "pushed demo image 127.0.0.1:$port/demo/hello:latest"
skopeo inspect --tls-verify=false "docker://127.0.0.1:$port/demo/hello:latest" | head -20

export IMG2VM_HOME="$work/home"
ref="127.0.0.1:$port/demo/hello:latest"
say "img2vm pull $ref"
"$bin" pull "$ref"
say "img2vm images"
"$bin" images
say "img2vm convert $ref -o rootfs.ext4 (rootless: libext2fs, no mkfs, no mount)"
"$bin" convert "$ref" -o "$work/rootfs.ext4"
e2fsck -fn "$work/rootfs.ext4" >/dev/null && echo "e2fsck: clean"

# img2vm's own KVM runner (`img2vm run`, issue #6) is not wired into the CLI yet; until it is,
# the demo boots the converted rootfs with our guest kernel and init under qemu's microvm
# machine (software emulation, so it works without /dev/kvm).
say "img2vm kernel build (cached under ~/.cache/img2vm/kernel after the first build, ~5 min)"
kernel=$("$bin" kernel build)
say "booting the rootfs with $kernel under qemu -M microvm (TCG)"
set +e
qemu-system-x86_64 -M microvm,acpi=off -accel tcg -m 256 -nographic -no-reboot -nodefaults \
  -serial stdio -kernel "$kernel" \
  -append "console=ttyS0 quiet root=/dev/vda rw init=/.img2vm/init reboot=k panic=-1" \
  -drive id=root,file="$work/rootfs.ext4",format=raw,if=none -device virtio-blk-device,drive=root \
  -device isa-debug-exit,iobase=0xf4,iosize=1
rc=$?
set -e
# The init writes the workload's exit status to port 0xf4; qemu exits with (status << 1) | 1.
if [ $((rc & 1)) -eq 1 ]; then status=$((rc >> 1)); else status="unknown (qemu exited with $rc)"; fi
say "the workload exited with status $status"
[ "$status" = 0 ]
