#!/usr/bin/env python3
"""bench/boot (issue #6): `img2vm run` against qemu's microvm, same kernel, same rootfs.

Makes a busybox image whose CMD prints a marker line, converts it once into img2vm's rootfs
cache (so every run is a cached-rootfs run), then alternates:
  img2vm run --json --kernel VMLINUX oci:DIR       (our KVM runner; copy-on-write root disk)
  qemu-system-x86_64 -M microvm ... -kernel VMLINUX -drive file=<that cached rootfs>,snapshot=on
measuring, from the moment the VMM is started, the time to the marker on its stdout (the
workload's first output), the time to its exit, and its peak RSS (ru_maxrss from wait4, guest
pages it touched included), plus img2vm's own --json timings (to_exec etc., from the guest
init's boot marks). bench/lib/timerun does the measuring.

Where this host has no hardware KVM (no /dev/kvm, or PVM), both VMMs run inside the nested
rig's L1 guest (tests/nested/nested-rig.sh: qemu TCG with a real /dev/kvm); the absolute times
are then those of an emulated CPU and only the comparison means something. The script says so.

    bench/boot/run.py [--rounds N] [--route auto|direct|nested] [--memory MIB] [--no-doc]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import benchlib as b  # noqa: E402

MARKER = "IMG2VM-BENCH-MARKER"
NAMES = ["img2vm run", "qemu microvm"]
TIMING_KEYS = ["vmm_setup", "kernel_boot", "init", "to_exec", "total"]


def busybox_image(layout):
    busybox = Path("/bin/busybox")
    if not busybox.is_file() or b"ld-linux" in busybox.read_bytes()[:4096]:
        b.die("needs a static /bin/busybox (Debian package busybox-static)")
    w = b.LayerWriter(layout)
    w.add_bytes("bin/busybox", busybox.read_bytes(), 0o755)
    w.add_symlink("bin/sh", "busybox")
    w.add_symlink("bin/echo", "busybox")
    w.add_dir("tmp", 0o1777)
    return b.write_layout(layout, [w.close()], ["/bin/sh", "-c", f"echo {MARKER}"])


def parse(output, plan):
    """Splits the script's output into one record per run, in plan order."""
    recs = [{"name": NAMES[int(head[0])], "round": int(head[1]), "t": t, "out": out, "err": err}
            for head, t, out, err in b.framed_runs(output)]
    if len(recs) != len(plan):
        b.die(f"expected {len(plan)} runs, got {len(recs)}:\n{output}")
    return recs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, help="timed rounds (default 3 nested, 10 direct)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--route", choices=["auto", "direct", "nested"], default="auto")
    ap.add_argument("--memory", type=int, default=256, help="guest memory in MiB, both VMMs (default 256)")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args()
    b.need("qemu-system-x86_64", "gcc")
    img2vm = b.img2vm_bin()
    facts = b.machine_facts(img2vm)
    kvm = json.loads(b.run([img2vm, "info", "--json"]))["kvm"]
    route = args.route if args.route != "auto" else ("direct" if kvm.get("kind") == "hardware" else "nested")
    nested = route == "nested"
    rounds = args.rounds or (3 if nested else 10)
    if nested:
        b.say("!" * 78)
        b.say(f"NO HARDWARE KVM HERE (/dev/kvm: {kvm.get('kind')}; {kvm.get('detail', '')}).")
        b.say("Both VMMs run NESTED inside the rig's L1 guest, which is qemu TCG (an emulated CPU):")
        b.say("absolute times are meaningless, only the comparison between the two means something.")
        b.say("!" * 78)
    init = Path(os.environ.get("IMG2VM_INIT") or b.ROOT / "build/default/guest/img2vm-init").resolve()
    if not init.is_file():
        b.die(f"{init} not built (scripts/build.sh default) and IMG2VM_INIT not set")
    kernel = Path(b.run([img2vm, "kernel", "build"]).strip().splitlines()[-1])

    with tempfile.TemporaryDirectory(prefix="img2vm-bench-boot.") as tmp:
        w = Path(tmp)
        env = dict(os.environ, IMG2VM_HOME=str(w / "home"), IMG2VM_INIT=str(init))
        busybox_image(w / "oci")
        shutil.copy(kernel, w / "vmlinux")
        b.run([img2vm, "convert", f"oci:{w}/oci:latest"], env=env)
        cached = sorted((w / "home").rglob("*.ext4"))
        if len(cached) != 1:
            b.die(f"expected one cached rootfs under {w}/home, found {cached}")
        rootfs = cached[0]
        # qemu's microvm firmware and PVH option ROM, given with -L so that the copies in L1 are found.
        (w / "qemu-data").mkdir()
        for f in ["qboot.rom", "bios-microvm.bin", "pvh.bin"]:
            if (Path("/usr/share/qemu") / f).exists():
                shutil.copy(Path("/usr/share/qemu") / f, w / "qemu-data" / f)
        (w / "tmp").mkdir()  # TMPDIR: qemu's snapshot=on overlay
        timerun = w / "timerun"
        shutil.copy(b.timerun_bin(), timerun)

        append = ("console=ttyS0 quiet root=/dev/vda rw init=/.img2vm/init reboot=k panic=-1 "
                  "tsc=reliable no_timer_check")
        cmds = [
            [img2vm, "run", "--json", "--kernel", w / "vmlinux", "--memory", f"{args.memory}M", f"oci:{w}/oci:latest"],
            ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host", "-m", f"{args.memory}M",
             "-L", w / "qemu-data", "-nodefaults", "-no-reboot", "-nographic", "-serial", "stdio",
             "-kernel", w / "vmlinux", "-append", append,
             "-drive", f"id=root,file={rootfs},format=raw,if=none,snapshot=on",
             "-device", "virtio-blk-device,drive=root", "-device", "isa-debug-exit,iobase=0xf4,iosize=1"],
        ]
        plan = b.schedule(rounds, [0, 1], args.warmup)
        script = [f"export IMG2VM_HOME={w}/home IMG2VM_INIT={init} TMPDIR={w}/tmp TIMERUN_GUEST_MIB={args.memory}"]
        for r, i in plan:
            script += [f"echo '@@RUN {i} {r}'",
                       b.shell_line([timerun, MARKER, w / "out", w / "err"] + cmds[i]),
                       f"echo @@OUT; cat {w}/out; echo @@ERR; tail -n 30 {w}/err; echo @@DONE"]
        (w / "bench.sh").write_text("\n".join(script) + "\n")

        if nested:
            rig = b.ROOT / "tests/nested/nested-rig.sh"
            timeout = 300 + len(plan) * 180
            b.say(f"starting the nested rig: {len(plan)} boots in L1 (several minutes; timeout {timeout} s)")
            files = [img2vm, b.vmm_bin(img2vm), init, shutil.which("qemu-system-x86_64"), w]
            cmd = [rig, "run", "--timeout", str(timeout), "--memory", "2048"]
            for f in files:
                cmd += ["--file", f]
            r = b.measure(cmd + ["--", "sh", w / "bench.sh"])
            output = r["stdout"]
            if r["rc"] != 0:
                b.die(f"nested rig failed ({r['rc']}):\n{output}\n{r['stderr']}")
        else:
            r = b.measure(["sh", w / "bench.sh"])
            output = r["stdout"] + r["stderr"]
        recs = parse(output, plan)

    # Check every run did what it should, then collect.
    res = {n: [] for n in NAMES}
    for rec in recs:
        t, name = rec["t"], rec["name"]
        ok_rc = 0 if name == "img2vm run" else 1  # qemu's isa-debug-exit: (status << 1) | 1
        if t["rc"] != ok_rc or t["marker_ms"] < 0:
            b.die(f"{name} round {rec['round']}: exit {t['rc']} (want {ok_rc}), marker "
                  f"{'missing' if t['marker_ms'] < 0 else 'seen'}\nstdout:\n{rec['out']}\nstderr:\n{rec['err']}")
        row = {"first_output_s": t["marker_ms"] / 1e3, "exit_s": t["wall_ms"] / 1e3, "maxrss_mib": t["maxrss_kib"] / 1024,
               "cpu_s": (t["user_ms"] + t["sys_ms"]) / 1e3, "guest_mib": t["guest_rss_kib"] / 1024,
               "overhead_mib": (t["rss_at_marker_kib"] - t["guest_rss_kib"]) / 1024,
               # VmHWM at the marker: the VMM program's own peak (ru_maxrss also spans what ran
               # before an exec: img2vm run's resolving, before it execs img2vm-vmm)
               # (when VmHWM could not be read, ru_maxrss, as for a program that does not exec)
               "peak_overhead_mib": ((t.get("hwm_at_marker_kib", -1) if t.get("hwm_at_marker_kib", -1) > 0
                                      else t["maxrss_kib"]) - t["guest_rss_kib"]) / 1024,
               "anon_mib": t["anon_kib"] / 1024}
        if name == "img2vm run":
            js = [ln for ln in rec["err"].splitlines() if ln.startswith("{")]
            if not js:
                b.die(f"img2vm run printed no --json summary:\n{rec['err']}")
            j = json.loads(js[-1])
            if not j.get("rootfs_cached"):
                b.die(f"img2vm run did not use the cached rootfs: {js[-1]}")
            row.update({k: j["timings_ms"].get(k, float("nan")) for k in TIMING_KEYS})
            row["root_disk"] = j.get("root_disk")
        tag = "warm-up" if rec["round"] < 0 else f"round {rec['round'] + 1}/{rounds}"
        b.say(f"{tag} {name}: first output {row['first_output_s']:.3f} s, exit {row['exit_s']:.3f} s, "
              f"peak RSS {row['maxrss_mib']:.1f} MiB, own RSS {row['overhead_mib']:.1f} MiB"
              + (f", to_exec {row['to_exec']:.1f} ms (vmm_setup {row['vmm_setup']:.1f} ms)" if "to_exec" in row else ""))
        if rec["round"] >= 0:
            res[name].append(row)

    mine, peer = res["img2vm run"], res["qemu microvm"]
    m_first = b.stat([x["first_output_s"] for x in mine])[0]
    q_first = b.stat([x["first_output_s"] for x in peer])[0]
    m_rss = b.stat([x["maxrss_mib"] for x in mine])[0]
    q_rss = b.stat([x["maxrss_mib"] for x in peer])[0]
    m_over = b.stat([x["overhead_mib"] for x in mine])[0]
    q_over = b.stat([x["overhead_mib"] for x in peer])[0]
    m_anon = b.stat([x["anon_mib"] for x in mine])[0]
    q_anon = b.stat([x["anon_mib"] for x in peer])[0]
    to_exec = b.stat([x["to_exec"] for x in mine])[0]
    rows = "\n".join(
        f"| {n} | {b.fmt([x['first_output_s'] for x in v])} | {b.fmt([x['exit_s'] for x in v])} | "
        f"{b.fmt([x['cpu_s'] for x in v], 's', 2)} | {b.fmt([x['maxrss_mib'] for x in v], 'MiB', 1)} | "
        f"{b.fmt([x['guest_mib'] for x in v], 'MiB', 1)} | {b.fmt([x['overhead_mib'] for x in v], 'MiB', 1)} | "
        f"{b.fmt([x['anon_mib'] for x in v], 'MiB', 1)} | {b.fmt([x['peak_overhead_mib'] for x in v], 'MiB', 1)} |"
        for n, v in res.items())
    trows = " | ".join(b.fmt([x[k] for x in mine], "ms", 1) for k in TIMING_KEYS)
    where = ("**NESTED: this host has no hardware KVM** (`img2vm info`: "
             f"{kvm.get('kind')}; {kvm.get('detail', '')}). Both VMMs ran inside the nested rig's L1 "
             "guest, `qemu-system-x86_64 -accel tcg -cpu max` with the Debian cloud kernel's kvm-amd "
             "(tests/nested/nested-rig.sh): every guest instruction and every VM exit goes through an "
             "emulated CPU, so **the absolute times are meaningless**; only the comparison between the "
             "two VMMs, measured side by side in the same L1, means something. RSS is not affected."
             if nested else "Hardware KVM: both VMMs ran directly on this host.")
    verdict = (f"First output: img2vm {m_first:.3f} s vs qemu microvm {q_first:.3f} s "
               f"(**qemu/img2vm = {q_first / m_first:.2f}x**); VMM's own RSS (outside guest RAM) img2vm "
               f"**{m_over:.1f} MiB** ({m_anon:.1f} MiB anonymous) vs qemu {q_over:.1f} MiB ({q_anon:.1f} MiB "
               f"anonymous); peak RSS in all img2vm {m_rss:.1f} MiB vs qemu "
               f"{q_rss:.1f} MiB; img2vm to_exec {to_exec:.1f} ms.")
    if nested:
        targets = ("Targets (hardware KVM only: under 150 ms to the workload's exec, VMM RSS overhead under "
                   "5 MiB, faster than qemu microvm): not assessable for time here; faster than qemu "
                   f"{'yes' if m_first < q_first else 'NO'} in L1 (qemu/img2vm {q_first / m_first:.2f}x; within the noise "
                   "below 1.1x); RSS overhead under 5 MiB: "
                   f"{'yes' if m_over < 5 else 'no'} in all ({m_over:.1f} MiB), {'yes' if m_anon < 5 else 'no'} "
                   f"for the anonymous part ({m_anon:.1f} MiB) (memory does not depend on the CPU's speed).")
    else:
        targets = (f"Targets on hardware KVM: to_exec under 150 ms — {'met' if to_exec < 150 else 'NOT met'} "
                   f"({to_exec:.1f} ms); faster than qemu microvm — {'met' if m_first < q_first else 'NOT met'}; "
                   f"VMM RSS overhead under 5 MiB — {'met' if m_over < 5 else 'NOT met'} in all ({m_over:.1f} MiB), "
                   f"{'met' if m_anon < 5 else 'NOT met'} for the anonymous part ({m_anon:.1f} MiB).")
    print(where)
    print(verdict)
    print(targets)
    print(rows)
    if args.no_doc:
        return
    q = b.shell_line(["qemu-system-x86_64"] + [str(c) for c in cmds[1][1:]])
    q = q.replace(str(rootfs), "ROOTFS").replace(str(w / "vmlinux"), "VMLINUX").replace(str(w / "qemu-data"), "QEMU_DATA")
    body = f"""## Boot (`bench/boot/run.py`, issue #6)

{where}

{rounds} rounds after {args.warmup} untimed warm-up round(s), the two alternating (order reversed every
other round); the same kernel (`img2vm kernel path`: {kernel.parent.name}/vmlinux), the same rootfs
(img2vm's cached conversion of a busybox image whose CMD is `echo {MARKER}`; qemu opens it with
`snapshot=on`, img2vm gives each run a copy-on-write view: {mine[0]['root_disk']}), {args.memory} MiB
of guest memory and one vCPU each, the same kernel command line. Times are from starting the VMM
process: to the marker on its stdout (the workload's first output) and to its exit. Peak RSS is
`ru_maxrss` of the VMM process, which includes the guest memory the guest touched (for img2vm it
also covers `img2vm run` before it execs its VMM, img2vm-vmm). When the marker appears,
`/proc/PID/smaps` is read once: "guest RAM resident" is the Rss of the {args.memory} MiB
guest-RAM mapping, "VMM's own RSS" everything else then (heap, stacks, code and libraries, shared
pages counted in full), "of which anonymous" its heap and stacks (what one more VM costs: code
and libraries are shared between VMMs), and "VMM peak − guest RAM" is VmHWM then (the running
program's peak since its exec; ru_maxrss where it could not be read: qemu's in the last run) minus
guest RAM: the VMM's own peak, exact if the peak came when
the guest had as much memory as at first output (if it came earlier, the real one is larger).
Median (min–max).

{verdict}

{targets}

| VMM | to first output | to exit | CPU (user+sys) | peak RSS | guest RAM resident | VMM's own RSS | of which anonymous | VMM peak − guest RAM |
|---|---|---|---|---|---|---|---|---|
{rows}

img2vm's own `--json` timings (ms since the VMM started; kernel_boot and the rest from the guest
init's boot marks):

| vmm_setup | kernel_boot | init | to_exec | total |
|---|---|---|---|---|
| {trows} |

Commands (`bench/lib/timerun` runs each and measures it; `DIR` the busybox OCI layout):

```sh
IMG2VM_HOME=H img2vm convert oci:DIR:latest            # once, not timed: fills the rootfs cache
IMG2VM_HOME=H img2vm run --json --kernel VMLINUX --memory {args.memory}M oci:DIR:latest
{q}
```
{"The nested route runs the same commands inside `tests/nested/nested-rig.sh run --file img2vm --file img2vm-vmm --file img2vm-init --file qemu-system-x86_64 --file WORKDIR -- sh WORKDIR/bench.sh` (QEMU_DATA holds copies of qboot.rom and pvh.bin, which qemu loads for microvm and a PVH kernel)." if nested else ""}

Machine (shared with other work while measured: see the load average):
{b.facts_md(facts, [["qemu-system-x86_64", "--version"]])}"""
    b.write_section("boot", body)


if __name__ == "__main__":
    main()
