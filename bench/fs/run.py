#!/usr/bin/env python3
"""bench/fs (issue #16): a guest's file system work on a host directory shared through img2vm's
virtio-fs device, through qemu's (both served by the same virtiofsd), and on img2vm's virtio-blk.

One image: busybox, the workload /bench.sh and /tree.tar (FILES small files). The guest, timed
by itself (/proc/uptime before and after each step, printed as `@@T` markers):
  write   dd 256 MiB of zeros with conv=fsync
  read    dd it back after dropping the guest's caches
  untar   tar -xf of the tree (from a tmpfs) and sync
  find    find over the tree, caches dropped first
  stat    find -exec stat {} + over the tree, caches dropped first
Contenders, same kernel, rootfs, memory and one vCPU:
  img2vm virtio-fs   img2vm run -v SHARE:/mnt (img2vm starts virtiofsd)
  qemu virtio-fs     qemu-system-x86_64 -M microvm with memfd guest RAM and vhost-user-fs-device
                     on a virtiofsd started here with the options img2vm gives it
  img2vm virtio-blk  img2vm run --disk DISK (a fresh ext4 image made by mke2fs every run)
Contenders alternate round by round. Without hardware KVM (no /dev/kvm, or PVM) it all runs in
the nested rig's L1 guest (tests/nested/nested-rig.sh, qemu TCG): only ratios mean something.

    bench/fs/run.py [--rounds N] [--route auto|direct|nested] [--mib 256] [--files 20000]
                    [--memory MIB] [--no-qemu] [--no-doc]
"""
import base64
import io
import json
import os
import random
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import benchlib as b  # noqa: E402

NAMES = ["img2vm virtio-fs", "qemu virtio-fs", "img2vm virtio-blk"]
STEPS = ["write", "read", "untar", "find", "stat"]
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
# What img2vm gives its virtiofsd (lib/runtime/src/virtiofsd.cpp) but the socket: it passes a
# listening one with --fd=N, qemu's gets --socket-path. Everything else is virtiofsd's default
# (cache=auto, no writeback, readdirplus, no xattr, thread pool and timeouts as built).
VIRTIOFSD_OPTS = ["-o", "sandbox=namespace", "-o", "log_level=warn"]
TAG = "benchfs"
QEMU_RUN = {"schema": 1, "mounts": [{"type": "virtiofs", "tag": TAG, "target": "/mnt"}]}

GUEST_SCRIPT = """\
# bench/fs workload: $1 is fs (the share is mounted on /mnt) or blk (/dev/vdb, ext4)
set -e
t() { read up idle < /proc/uptime; echo "@@T $1 $up"; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
mkdir -p /scratch
mount -t tmpfs tmpfs /scratch
cp /tree.tar /scratch/
if [ "$1" = blk ]; then mount -t ext4 /dev/vdb /mnt; fi
D=/mnt/bench
mkdir $D
cold; t write; dd if=/dev/zero of=$D/big bs=1M count=@MIB@ conv=fsync 2>/dev/null; t write.
cold; t read; dd if=$D/big of=/dev/null bs=1M 2>/dev/null; t read.
cold; t untar; tar -xf /scratch/tree.tar -C $D; sync; t untar.
cold; t find; find $D/tree > /scratch/list; t find.
cold; t stat; find $D/tree -exec stat -c %s {} + > /dev/null; t stat.
echo "@@N $(wc -l < /scratch/list)"
"""


def tree_tar(files, seed=1):
    """A tar of `files` small files (0-2 KiB of random bytes) in 100 directories of tree/;
    returns (bytes, paths find lists)."""
    rnd, buf, dirs = random.Random(seed), io.BytesIO(), 100
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in ["tree"] + [f"tree/d{i:02d}" for i in range(dirs)]:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, b.FIXED_MTIME
            t.addfile(info)
        for i in range(files):
            info = tarfile.TarInfo(f"tree/d{i % dirs:02d}/f{i:05d}")
            data = rnd.randbytes(rnd.randint(0, 2048))
            info.size, info.mode, info.mtime = len(data), 0o644, b.FIXED_MTIME
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue(), 1 + dirs + files


def image(layout, tar, mib):
    w = b.busybox_writer(layout, ["sh", "mkdir", "mount", "cp", "dd", "sync", "tar", "find", "xargs", "stat", "wc"])
    w.add_dir("mnt")
    w.add_bytes("bench.sh", GUEST_SCRIPT.replace("@MIB@", str(mib)).encode(), 0o755)
    w.add_bytes("tree.tar", tar)
    return b.write_layout(layout, [w.close()], ["/bin/sh", "/bench.sh", "fs"])


def script_for(plan, names, cmds, w, args, tools):
    """The shell script that runs every (round, contender) of the plan, here or in L1."""
    share, disk, sock = w / "share", w / "disk.img", w / "virtiofsd.sock"
    lines = []
    for r, i in plan:
        name = names[i]
        lines.append(f"echo '@@RUN {i} {r}'; rm -rf {share} {disk} {sock}; mkdir {share}")
        if name == "img2vm virtio-blk":
            lines.append(f"truncate -s {args.mib + 512}M {disk} && {tools['mke2fs']} -q -F -t ext4 "
                         f"-E lazy_itable_init=0,lazy_journal_init=0 {disk}")
        if name == "qemu virtio-fs":
            lines += [b.shell_line([VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={share}"] + VIRTIOFSD_OPTS)
                      + f" 2> {w}/virtiofsd.err & vfsd=$!",
                      # bounded wait for its socket (it logs nothing at log_level=warn)
                      f"n=0; while [ ! -S {sock} ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done"]
        lines += [b.shell_line(["timeout", str(args.vm_timeout)] + cmds[name]) + f" > {w}/vm.out 2> {w}/vm.err",
                  'echo "@@VM $?"' + ("; kill $vfsd 2>/dev/null; wait $vfsd" if name == "qemu virtio-fs" else ""),
                  f"grep -a '^@@[TN] ' {w}/vm.out | tr -d '\\r'",
                  f"echo @@ERR; tail -n 20 {w}/vm.err {w}/virtiofsd.err 2>/dev/null; tail -n 20 {w}/vm.out; echo @@DONE",
                  f"rm -f {w}/virtiofsd.err"]
    lines.append(f"rm -rf {share} {disk}")
    return "\n".join(lines) + "\n"


def parse(output, plan, names, entries, ok_rc):
    """({name: [{step: seconds}, ...]} over the timed rounds, {name: why it failed}); a failed img2vm
    run fails loudly."""
    res, failed = {n: [] for n in names}, {}
    blocks = output.split("@@RUN ")[1:]
    if len(blocks) != len(plan):
        b.die(f"expected {len(plan)} runs, got {len(blocks)}:\n{output}")
    for block in blocks:
        head, _, rest = block.partition("\n")
        i, r = map(int, head.split())
        name, body = names[i], rest.partition("@@ERR")[0]
        marks = dict(ln.split()[1:3] for ln in body.splitlines() if ln.startswith("@@T "))
        count = [ln.split()[1] for ln in body.splitlines() if ln.startswith("@@N ")]
        vm_rc = rest.partition("@@VM ")[2].split("\n", 1)[0].strip()
        if vm_rc != str(ok_rc[name]) or count != [str(entries)] or any(s not in marks or s + "." not in marks
                                                                          for s in STEPS):
            why = (f"{name} round {r}: VM exit {vm_rc} (want {ok_rc[name]}), find listed {count} (want {entries}), "
                   f"steps timed {sorted(marks)}\n{block}")
            if not name.startswith("qemu"):
                b.die(why)
            b.say(why)  # the peer failing is a result too: reported, the rest still compared
            failed.setdefault(name, why.partition("@@ERR")[2].partition("@@DONE")[0].strip())
            continue
        row = {s: float(marks[s + "."]) - float(marks[s]) for s in STEPS}
        tag = "warm-up" if r < 0 else f"round {r + 1}"
        b.say(f"{tag} {name}: " + ", ".join(f"{s} {row[s]:.2f} s" for s in STEPS))
        if r >= 0:
            res[name].append(row)
    return {n: v for n, v in res.items() if n not in failed}, failed


def main():
    ap = b.vm_bench_parser(__doc__, 512, 5)
    ap.add_argument("--mib", type=int, default=256, help="MiB written and read (default 256)")
    ap.add_argument("--files", type=int, default=20000, help="small files in the tree (default 20000)")
    ap.add_argument("--vm-timeout", type=int, default=1200, help="seconds a VM may live (default 1200)")
    ap.add_argument("--no-qemu", action="store_true", help="leave out qemu's virtio-fs")
    args = ap.parse_args()
    b.need("qemu-system-x86_64", "gcc", "timeout", "mke2fs")
    if not Path(VIRTIOFSD).is_file():
        b.die(f"needs {VIRTIOFSD} (Debian package qemu-system-common)")
    img2vm = b.img2vm_bin()
    facts = b.machine_facts(img2vm)
    nested, kvm = b.kvm_route(img2vm, args.route)
    rounds = args.rounds or (3 if nested else 5)
    names = [n for n in NAMES if not (args.no_qemu and n.startswith("qemu"))]
    tools = {"mke2fs": Path(shutil.which("mke2fs")).resolve()}

    with tempfile.TemporaryDirectory(prefix="img2vm-bench-fs.") as tmp:
        w = Path(tmp)
        tar, entries = tree_tar(args.files)
        image(w / "oci", tar, args.mib)
        g = b.Guests(img2vm, w, w / "oci")
        mem = f"{args.memory}M"
        cmds = {
            "img2vm virtio-fs": g.img2vm_run(args.memory, "-v", f"{w}/share:/mnt"),
            "qemu virtio-fs": g.qemu(args.memory, "img2vm.run=" + base64.urlsafe_b64encode(
                json.dumps(QEMU_RUN).encode()).decode().rstrip("="), [
                "-object", f"memory-backend-memfd,id=mem,size={mem},share=on", "-machine", "memory-backend=mem",
                # qemu's virtio-mmio is legacy (virtio 0.9) by default, which virtiofsd refuses
                "-global", "virtio-mmio.force-legacy=false",
                "-chardev", f"socket,id=vfs,path={w}/virtiofsd.sock", "-device",
                f"vhost-user-fs-device,chardev=vfs,tag={TAG}"]),
            "img2vm virtio-blk": g.img2vm_run(args.memory, "--disk", f"{w}/disk.img") + ["/bin/sh", "/bench.sh", "blk"],
        }
        plan = b.schedule(rounds, list(range(len(names))), args.warmup)
        (w / "bench.sh").write_text(g.shell_exports() + "\n" + script_for(plan, names, cmds, w, args, tools))
        files = g.files() + [VIRTIOFSD, tools["mke2fs"], "/etc/mke2fs.conf"]
        output = b.run_script(w / "bench.sh", nested, files, 600 + len(plan) * 400, memory_mib=3072)
        res, failed = parse(output, plan, names, entries, {n: 1 if n.startswith("qemu") else 0 for n in names})
        shown = {n: g.shown(c).replace(f"{w}/", "") for n, c in cmds.items() if n in names}
        kernel_dir, tar_mib = g.kernel.parent.name, len(tar) / 2**20
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())

    med = {n: {s: b.stat([x[s] for x in v])[0] for s in STEPS} for n, v in res.items()}
    mine = med["img2vm virtio-fs"]
    verdicts = []
    for peer, what in [("qemu virtio-fs", "qemu's virtio-fs"), ("img2vm virtio-blk", "img2vm's virtio-blk")]:
        if peer in med:
            ratios = {s: mine[s] / med[peer][s] for s in STEPS}
            verdicts.append(f"img2vm's virtio-fs time / {what} (median; above 1: img2vm's virtio-fs slower): "
                            + ", ".join(f"{s} **{ratios[s]:.2f}x**" for s in STEPS) + ".")
            if peer.startswith("qemu"):
                worst = max(ratios.values())
                verdicts.append(f"Target (within 1.1x of qemu on every row): **{'met' if worst <= 1.1 else 'NOT met'}** "
                                f"(worst {worst:.2f}x).")
    header = "| contender | " + " | ".join(STEPS) + " | write throughput | read throughput |"
    rows = "\n".join(f"| {n} | " + " | ".join(b.fmt([x[s] for x in v], "s", 2) for s in STEPS) + " | "
                     + " | ".join(b.fmt([args.mib / x[s] for x in v], "MiB/s", 1) for s in ["write", "read"]) + " |"
                     for n, v in res.items())
    table = f"{header}\n|{'---|' * (len(STEPS) + 3)}\n{rows}"
    verdicts += [f"**{n} failed**, so it has no row; its last output:\n\n```\n{why}\n```" for n, why in failed.items()]
    where = b.nested_note(nested, kvm, "the times")
    print(where)
    print("\n".join(verdicts))
    print(table)
    if args.no_doc:
        return
    cmd_lines = "\n".join(f"{shown[n]}    # {n}" for n in names)
    sizes = ("" if (args.mib, args.files) == (256, 20000) else
             f" **Smaller than the issue's 256 MiB and 20,000 files** (`--mib {args.mib} --files {args.files}`), "
             "to fit the time a run may take here.")
    body = f"""## Shared directories (`bench/fs/run.py`, issue #16)

{where}

The guest's own clock (`/proc/uptime`, 10 ms steps) times each step of one workload (`/bench.sh`
in a busybox image, {args.memory} MiB and one vCPU, the same vmlinux {kernel_dir}/vmlinux and
cached rootfs for all): **write** `dd if=/dev/zero bs=1M count={args.mib} conv=fsync`, **read**
`dd` of that file to /dev/null, **untar** `tar -xf` of {args.files} files of 0-2 KiB in 100
directories ({tar_mib:.1f} MiB tar, read from a tmpfs) followed by `sync`, **find** `find` over
the tree, **stat** `find -exec stat -c %s {{}} +` over the tree; `sync` and `echo 3
> /proc/sys/vm/drop_caches` before each step, so reads and lookups start cold in the guest (the
host side keeps its page cache: everything lives in the host's, here L1's, tmpfs). Contenders:
**img2vm virtio-fs** `-v SHARE:/mnt`, **qemu virtio-fs** `-M microvm` with `memory-backend-memfd,share=on`
and `vhost-user-fs-device` (the guest init mounts tag `{TAG}` on /mnt, told through `img2vm.run=`;
`-global virtio-mmio.force-legacy=false`: qemu's virtio-mmio speaks legacy virtio 0.9 unless told
otherwise, and virtiofsd's libvhost-user then panics, "virtio legacy devices aren't supported by
libvhost-user", so qemu loses it at `vhost_set_mem_table`),
both served by `{VIRTIOFSD}` ({b._version([VIRTIOFSD, "--version"])}) with the same options,
`-o source=SHARE {" ".join(VIRTIOFSD_OPTS)}` and otherwise its defaults (cache=auto, no
writeback, readdirplus, no xattr; img2vm hands it a listening socket with `--fd`, qemu's gets
`--socket-path`; as root img2vm also gives it a mount namespace of its own), and **img2vm
virtio-blk** `--disk DISK` on a fresh ext4 image ({args.mib + 512} MiB, `mke2fs -t ext4 -E
lazy_itable_init=0,lazy_journal_init=0`) mounted on /mnt. A fresh empty share or disk every run.
{rounds} rounds after {args.warmup} untimed warm-up round(s), contenders alternating (order reversed
every other round); median (min–max) over the rounds, of seconds and of each run's MiB/s.{sizes}

{chr(10).join(verdicts)}

{table}

Commands (DIR the OCI layout; ROOTFS img2vm's cached conversion of it; SHARE and DISK fresh each run):

```sh
IMG2VM_HOME=H img2vm convert oci:DIR:latest            # once, not timed: fills the rootfs cache
{VIRTIOFSD} --socket-path=SOCK -o source=SHARE {" ".join(VIRTIOFSD_OPTS)} &    # for qemu
{cmd_lines}
```
{"Nested: all of it runs in L1 through `tests/nested/nested-rig.sh run --memory 3072 --file img2vm --file img2vm-vmm --file img2vm-init --file qemu-system-x86_64 --file virtiofsd --file mke2fs --file /etc/mke2fs.conf --file WORKDIR -- sh WORKDIR/bench.sh`; L1 has one emulated CPU, which the VMM, the guest and virtiofsd share." if nested else ""}

Machine (shared with other work while measured: load average {load_end} at the end):
{b.facts_md(facts, [["qemu-system-x86_64", "--version"]])}"""
    b.write_section("fs", body)


if __name__ == "__main__":
    main()
