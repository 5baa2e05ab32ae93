#!/usr/bin/env python3
"""bench/oci (issue #18): what a microVM costs a container engine over a plain container.

The wall time of `podman run --rm IMAGE true` with `--runtime img2vm-oci` (each container a VM of
ours: create boots it to the workload's exec, start releases it, the monitor reports its exit)
against `--runtime crun` (a plain container), on the same busybox image and the same podman,
round after round, alternating the two (bench/lib/timerun times each command from its start to
its exit). Both run with `--network none` unless `--network default` is given, so the figure is
the runtime's and not CNI's. podman 4.3, conmon and crun are Debian's.

Without hardware KVM (no /dev/kvm, or PVM) it all runs in the nested rig's L1 guest with its
Debian userland (tests/nested/nested-rig.sh run --userland debian; qemu TCG): the absolute
numbers are an emulated CPU's, only the ratio means something. With hardware KVM it runs here
and needs podman, crun, conmon and skopeo installed, and root.

    bench/oci/run.py [--rounds N] [--warmup N] [--route auto|direct|nested] [--memory MIB]
                     [--network none|default] [--no-doc]
"""
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import benchlib as b  # noqa: E402

CONTENDERS = ["img2vm-oci", "crun"]
VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")

# conmon logs to syslog; a busybox syslogd gives L1 a /dev/log (without one podman's cleanup
# of each container waits for a timeout). The wait for its socket is bounded (60 s).
PRELUDE = r"""
if [ ! -S /dev/log ]; then
  busybox syslogd -n -O "$W/syslog" & syslogd=$!
  n=0
  while [ ! -S /dev/log ]; do
    n=$((n + 1)); [ $n -le 300 ] || { echo "no /dev/log after 60 s"; exit 89; }
    sleep 0.2
  done
fi
"""


def oci_bin(img2vm):
    """img2vm-oci in the same build tree as img2vm (IMG2VM_OCI picks another)."""
    o = Path(os.environ.get("IMG2VM_OCI") or Path(img2vm).parents[1] / "img2vm-oci" / "img2vm-oci")
    if not o.is_file():
        b.die(f"{o} not built: run scripts/build.sh default (or set IMG2VM_OCI)")
    return o.resolve()


def script(w, oci, timerun, rounds, warmup, memory, network):
    podman = ["podman", "run", "--rm", "--network", network]
    cmds = {
        "img2vm-oci": podman + ["--runtime", oci, "--annotation", f"org.img2vm.kernel={w / 'vmlinux'}",
                                "--annotation", f"org.img2vm.memory_mib={memory}", "localhost/bench-oci", "true"],
        "crun": podman + ["--runtime", "crun", "localhost/bench-oci", "true"],
    }
    lines = [f"W={w}", PRELUDE,
             b.shell_line(["skopeo", "copy", "-q", f"oci:{w / 'oci'}:latest",
                           "containers-storage:localhost/bench-oci:latest"]) + " || exit 90"]
    for r, name in b.schedule(rounds, CONTENDERS, warmup):
        lines += [f"echo '@@RUN {CONTENDERS.index(name)} {r}'",
                  b.shell_line([timerun, "-", w / "out", w / "err"] + cmds[name]),
                  f"echo; tail -n 5 {w}/err; echo @@DONE"]
    lines += [f"echo \"@@LEFT $({oci} list -q | wc -l) $(pidof img2vm-vmm | wc -w)\"",
              '[ -n "${syslogd:-}" ] && kill $syslogd', "true"]
    return "\n".join(lines) + "\n", cmds


def parse(output):
    res = {n: [] for n in CONTENDERS}
    for block in output.split("@@RUN ")[1:]:
        head, _, rest = block.partition("\n")
        i, r = map(int, head.split())
        timing = json.loads(rest.partition("\n")[0])
        if timing["rc"] != 0:
            b.die(f"{CONTENDERS[i]} round {r}: rc {timing['rc']}:\n{block}")
        if r >= 0:
            res[CONTENDERS[i]].append(timing["wall_ms"] / 1e3)
    left = output.rpartition("@@LEFT ")[2].split("\n", 1)[0].split()
    if left != ["0", "0"]:
        b.die(f"img2vm-oci left containers or VMMs behind: {left}\n{output[-4000:]}")
    return res


def main():
    ap = b.vm_bench_parser(__doc__, 256, 10)
    ap.add_argument("--network", choices=["none", "default"], default="none",
                    help="podman's --network for both runtimes (default none)")
    args = ap.parse_args()
    b.need("gcc")
    img2vm = b.img2vm_bin()
    oci = oci_bin(img2vm)
    vmm = b.vmm_bin(img2vm)
    init = Path(os.environ.get("IMG2VM_INIT") or b.ROOT / "build/default/guest/img2vm-init").resolve()
    if not init.is_file():
        b.die(f"{init} not built (scripts/build.sh default) and IMG2VM_INIT not set")
    if not VIRTIOFSD.is_file():
        b.die(f"needs {VIRTIOFSD} (Debian's qemu-system-common)")
    facts = b.machine_facts(img2vm)
    nested, kvm = b.kvm_route(img2vm, args.route)
    if not nested:
        b.need("podman", "crun", "conmon", "skopeo")
        if os.geteuid() != 0:
            b.die("podman with img2vm-oci runs as root here (virtiofsd, the VM's tap)")
    else:
        b.need("mmdebstrap", "qemu-system-x86_64")
    rounds = args.rounds or (3 if nested else 10)
    network = "bridge" if args.network == "default" else "none"
    with tempfile.TemporaryDirectory(prefix="img2vm-bench-oci.") as tmp:
        w = Path(tmp)
        layout = w / "oci"
        wr = b.busybox_writer(layout, ["sh", "true"])
        b.write_layout(layout, [wr.close()], ["/bin/sh"])
        kernel = Path(b.run([img2vm, "kernel", "build"]).strip().splitlines()[-1])
        shutil.copy(kernel, w / "vmlinux")
        timerun = w / "timerun"
        shutil.copy(b.timerun_bin(), timerun)
        text, cmds = script(w, oci, timerun, rounds, args.warmup, args.memory, network)
        (w / "bench.sh").write_text(text)
        output = b.run_script(w / "bench.sh", nested, [oci, vmm, img2vm, init, VIRTIOFSD, w], 3600,
                              userland="debian")
        res = parse(output)
        shown = {n: b.shell_line(c).replace(str(w), "W").replace(str(oci), "img2vm-oci") for n, c in cmds.items()}
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    med = {n: b.stat(v)[0] for n, v in res.items()}
    verdict = (f"`podman run --rm IMAGE true`: img2vm-oci median **{med['img2vm-oci']:.2f} s**, crun "
               f"**{med['crun']:.2f} s**: a microVM costs the engine **{med['img2vm-oci'] / med['crun']:.1f}x** "
               f"a plain container (+{med['img2vm-oci'] - med['crun']:.2f} s), the guest's boot to its "
               f"workload's exec, virtio-fs for the root and the VMM's start and end.")
    table = b.results_table(res, "runtime", 3)
    where = b.nested_note(nested, kvm, "the times")
    b.print_result(where, verdict, table)
    if args.no_doc:
        return
    cmd_lines = "\n".join(f"{shown[n]}    # {n}" for n in CONTENDERS)
    body = f"""## podman with img2vm-oci against crun (`bench/oci/run.py`, issue #18)

{where}

One busybox image in podman's storage (`skopeo copy oci:… containers-storage:…`), then
{rounds} rounds after {args.warmup} warm-up round(s), each running `podman run --rm … true` once
with each runtime, the order alternating; `--network {network}` for both; the VM gets
{args.memory} MiB and one vCPU. bench/lib/timerun times each podman command from its start to
its exit.

{verdict}

{table}

Commands (`W` the work directory):

```sh
{cmd_lines}
```

Machine (shared with other work while measured: load average {load_end} at the end):
{b.facts_md(facts)}"""
    b.write_section("oci", body)


if __name__ == "__main__":
    main()
