#!/usr/bin/env python3
"""bench/exec (issue #17): how fast `img2vm exec` reaches a running VM, over the vsock device
and the guest's exec agent.

One busybox image, started once with `img2vm run -d --name bench IMAGE sleep ...`; then, round
after round (bench/lib/timerun measures each command from its start to its exit):
  exec true     img2vm exec bench true                         (the latency of one exec)
  stream        img2vm exec bench dd if=/dev/zero bs=64k count=1024   (64 MiB of stdout)
  ps            img2vm ps                     (process start plus reading the VM store: the part
                                               of an exec spent before the VM is asked anything)
  version       img2vm --version              (process start alone)
  cold run      img2vm run IMAGE echo MARKER  (a cold boot to the first output, for scale)
Without hardware KVM (no /dev/kvm, or PVM) it all runs in the nested rig's L1 guest
(tests/nested/nested-rig.sh, qemu TCG): the absolute numbers are an emulated CPU's. There is no
peer with an exec channel here to put beside it in L1 (docker is not installed, and qemu's
vhost-vsock needs modules L1 does not load), so the section reports img2vm's numbers and their
breakdown; the issue's target (exec true under 10 ms) is for hardware KVM.

    bench/exec/run.py [--rounds N] [--execs N] [--route auto|direct|nested] [--memory MIB] [--no-doc]
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

MARKER = "IMG2VM-BENCH-MARKER"
STREAM_BYTES = 64 << 20
STEPS = ["exec true", "stream", "ps", "version", "cold run"]


def image(layout):
    w = b.busybox_writer(layout, ["sh", "echo", "true", "dd", "sleep"])
    return b.write_layout(layout, [w.close()], ["/bin/sh", "-c", f"echo {MARKER}"])


def script(g, w, timerun, rounds, warmup, execs, memory):
    run = [g.img2vm, "run", "--kernel", g.vmlinux, "--memory", f"{memory}M"]
    cmds = {
        "exec true": [g.img2vm, "exec", "bench", "true"],
        "stream": [g.img2vm, "exec", "bench", "dd", "if=/dev/zero", "bs=65536", "count=1024"],
        "ps": [g.img2vm, "ps"],
        "version": [g.img2vm, "--version"],
        "cold run": run + [g.image, "echo", MARKER],
    }
    lines = [g.shell_exports(),
             b.shell_line(run + ["-d", "--name", "bench", g.image, "sleep", "100000000"]) + " > /dev/null || exit 1"]
    for r in range(-warmup, rounds):
        for step in STEPS:
            for i in range(execs if step == "exec true" else 1):
                marker = MARKER if step == "cold run" else "-"
                lines += [f"echo '@@RUN {STEPS.index(step)} {r}'",
                          b.shell_line([timerun, marker, w / "out", w / "err"] + cmds[step]),
                          f"echo; echo \"@@BYTES $(wc -c < {w}/out)\"; tail -n 5 {w}/err; echo @@DONE"]
    lines.append(b.shell_line([g.img2vm, "rm", "-f", "bench"]) + " > /dev/null")
    return "\n".join(lines) + "\n", cmds


def parse(output):
    res = {s: [] for s in STEPS}
    for block in output.split("@@RUN ")[1:]:
        head, _, rest = block.partition("\n")
        i, r = map(int, head.split())
        timing = json.loads(rest.partition("\n")[0])
        size = int(rest.partition("@@BYTES ")[2].split("\n", 1)[0])
        step = STEPS[i]
        want = STREAM_BYTES if step == "stream" else None
        if timing["rc"] != 0 or (want is not None and size != want) or (step == "cold run" and timing["marker_ms"] < 0):
            b.die(f"{step} round {r}: rc {timing['rc']}, {size} bytes of stdout:\n{block}")
        if r >= 0:
            res[step].append(timing["marker_ms"] / 1e3 if step == "cold run" else timing["wall_ms"] / 1e3)
    return res


def main():
    ap = b.vm_bench_parser(__doc__, 256, 10)
    ap.add_argument("--execs", type=int, default=10, help="exec true runs per round (default 10)")
    args = ap.parse_args()
    b.need("gcc")
    img2vm = b.img2vm_bin()
    facts = b.machine_facts(img2vm)
    nested, kvm = b.kvm_route(img2vm, args.route)
    rounds = args.rounds or (3 if nested else 10)
    with tempfile.TemporaryDirectory(prefix="img2vm-bench-exec.") as tmp:
        w = Path(tmp)
        image(w / "oci")
        g = b.Guests(img2vm, w, w / "oci")
        timerun = w / "timerun"
        shutil.copy(b.timerun_bin(), timerun)
        text, cmds = script(g, w, timerun, rounds, args.warmup, args.execs, args.memory)
        (w / "bench.sh").write_text(text)
        output = b.run_script(w / "bench.sh", nested, g.files(), 1800)
        res = parse(output)
        shown = {s: g.shown(c) for s, c in cmds.items()}
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    med = {s: b.stat(v)[0] for s, v in res.items()}
    mib_s = [STREAM_BYTES / 2**20 / x for x in res["stream"]]
    target = "" if nested else (f" Target (hardware KVM: exec true under 10 ms): "
                                f"**{'met' if med['exec true'] < 0.010 else 'NOT met'}**.")
    verdict = (f"`img2vm exec VM true`: median **{med['exec true'] * 1e3:.1f} ms**, of which "
               f"{med['ps'] * 1e3:.1f} ms is what `img2vm ps` costs as well (process start "
               f"{med['version'] * 1e3:.1f} ms, then the VM store) and the rest the vsock "
               f"connection, the agent's fork and exec in the guest, and the exit's way back. "
               f"64 MiB of stdout: {b.fmt(mib_s, 'MiB/s', 1)}. A cold `img2vm run` to its first "
               f"output: {med['cold run'] * 1e3:.0f} ms, {med['cold run'] / med['exec true']:.0f}x "
               f"an exec.{target}")
    table = b.results_table(res, "step", 4)
    where = b.nested_note(nested, kvm, "the times")
    b.print_result(where, verdict, table)
    if args.no_doc:
        return
    cmd_lines = "\n".join(f"{shown[s]}    # {s}" for s in STEPS)
    body = f"""## Exec into a running VM (`bench/exec/run.py`, issue #17)

{where}

One VM started with `img2vm run -d` ({args.memory} MiB, one vCPU, busybox running `sleep`), then
{rounds} rounds after {args.warmup} warm-up round(s), each with {args.execs} `exec true`, one
64 MiB stream, `img2vm ps`, `img2vm --version` and a cold `img2vm run` for scale; bench/lib/timerun
times each command from its start to its exit (the cold run to its first output). No peer ran
beside it: nothing else here has an exec channel into a VM in L1 (docker is not installed;
qemu's vhost-vsock needs the vhost_vsock module, which the rig's L1 does not load), so these are
img2vm's own numbers with their breakdown.

{verdict}

{table}

Commands (`bench/lib/timerun` runs each; `DIR` the busybox OCI layout):

```sh
img2vm run -d --name bench oci:DIR:latest sleep 100000000
{cmd_lines}
```

Machine (shared with other work while measured: load average {load_end} at the end):
{b.facts_md(facts)}"""
    b.write_section("exec", body)


if __name__ == "__main__":
    main()
