#!/usr/bin/env bash
# The main job from a fresh Debian 12 machine: install, build, start a local registry, push a
# demo image to it, then `img2vm pull` and `img2vm run` it in img2vm's own KVM runner. With
# hardware KVM the run happens right here; where /dev/kvm is missing or is PVM (a software
# nested hypervisor, far too slow for a Linux guest) it happens inside a nested L1 VM under
# qemu TCG that has a real /dev/kvm (tests/nested/nested-rig.sh), and the script says so.
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
  local rc=$?
  if [ -n "$registry_pid" ]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true  # its status (143) is not the demo's
  fi
  rm -rf "$work"
  exit "$rc"
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
# umoci raw add-layer takes an uncompressed tar and gzips it itself (a .tar.gz here would become
# a layer compressed twice, which img2vm, docker and containerd refuse).
tar -C "$work/rootfs" --numeric-owner --owner=0 --group=0 -cf "$work/layer.tar" .
umoci init --layout "$work/oci" >/dev/null
umoci new --image "$work/oci:demo" >/dev/null
umoci raw add-layer --image "$work/oci:demo" "$work/layer.tar" >/dev/null
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

say "img2vm kernel build (cached under ~/.cache/img2vm/kernel after the first build, ~5 min)"
kernel=$("$bin" kernel build)
say "img2vm convert $ref (into the rootfs cache, which img2vm run then finds)"
"$bin" convert "$ref"

kvm=$("$bin" info --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kvm"]["kind"])')
run=("$PWD/$bin" run --timings --kernel "$kernel" "$ref")
set +e
if [ "$kvm" = hardware ]; then
  say "img2vm run $ref (hardware KVM: booting directly)"
  "${run[@]}"
  status=$?
else
  say "img2vm run $ref — this host's /dev/kvm is '$kvm', not hardware KVM: running img2vm inside a nested L1 VM (qemu TCG + kvm-amd), which is slow (about a minute); only correctness, not speed, shows here"
  init="$PWD/build/default/guest/img2vm-init"
  printf 'export IMG2VM_HOME=%q IMG2VM_INIT=%q\nexec' "$IMG2VM_HOME" "$init" > "$work/run.sh"
  printf ' %q' "${run[@]}" >> "$work/run.sh"
  echo >> "$work/run.sh"
  files=(--file "$PWD/$bin" --file "$(dirname "$PWD/$bin")/img2vm-vmm" --file "$kernel" --file "$init" --file "$IMG2VM_HOME" --file "$work/run.sh")
  tests/nested/nested-rig.sh run --timeout 900 --memory 1024 "${files[@]}" -- sh "$work/run.sh"
  status=$?
fi
set -e
say "the workload exited with status $status"
[ "$status" = 0 ]
