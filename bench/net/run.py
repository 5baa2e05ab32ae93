#!/usr/bin/env python3
"""bench/net (issue #7): TCP throughput and request latency between the host and a guest server
published with `-p`, through img2vm's two network backends and qemu's user-mode networking.

One image, one guest kernel, one guest server: bench/net/netbench.c (compiled static here) is
the image's CMD (`netbench serve 5201`) and also the host's clients. Contenders:
  img2vm user   img2vm run --network user -p 127.0.0.1:PORT:5201   (libslirp in the runner)
  img2vm tap    img2vm run --network tap  -p 127.0.0.1:PORT:5201   (tap + nftables DNAT; root)
  qemu user     qemu-system-x86_64 -M microvm ... -netdev user,hostfwd=tcp:127.0.0.1:PORT-:5201
                -device virtio-net-device (qemu's libslirp), booting the same vmlinux and the
                same cached rootfs (snapshot=on); its guest gets the same eth0 setup from the
                same guest init through `img2vm.run=` (docs/guest-abi.md §3)
For each contender and round: start the VM (under bench/lib/timerun, for its CPU time), wait
until the server answers a ping through the published port (time to ready), send for SECONDS
(host->guest, until the guest has counted every byte), receive for SECONDS (guest->host), COUNT
round trips of SIZE bytes (latency), then ask the server to exit and wait for the VM to end.
Contenders alternate round by round.

Without hardware KVM (no /dev/kvm, or PVM) it all runs inside the nested rig's L1 guest
(tests/nested/nested-rig.sh, qemu TCG): the numbers are then an emulated CPU's, and only the
comparison means something. The script says so.

    bench/net/run.py [--rounds N] [--route auto|direct|nested] [--seconds S] [--count N]
                     [--size BYTES] [--memory MIB] [--no-tap] [--no-doc]
"""
import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import benchlib as b  # noqa: E402

GUEST_PORT = 5201
NAMES = ["img2vm user", "img2vm tap", "qemu user"]
# What each contender's guest init is told (qemu's through img2vm.run=; img2vm sends the same).
USER_NET = {"schema": 1, "net": {"interface": "eth0", "address": "10.0.2.15", "prefix": 24, "gateway": "10.0.2.2"}}
METRICS = [  # key, column title, unit, digits
    ("h2g", "host→guest", "MiB/s", 1),
    ("g2h", "guest→host", "MiB/s", 1),
    ("rtt_median", "round trip, median", "µs", 0),
    ("rtt_p99", "round trip, p99", "µs", 0),
    ("ready", "start to first answer", "s", 2),
    ("cpu", "VMM CPU (user+sys)", "s", 2),
]


def image(layout, netbench):
    w = b.busybox_writer(layout, ["sh", "ip", "ifconfig"])
    w.add_bytes("bin/netbench", netbench.read_bytes(), 0o755)
    return b.write_layout(layout, [w.close()], ["/bin/netbench", "serve", str(GUEST_PORT)])


def script_for(plan, cmds, ports, w, args, nested):
    """The shell script that runs every (round, contender) of the plan, here or in L1."""
    nb, tr, host = w / "netbench", w / "timerun", "127.0.0.1"
    lines = []
    if nested:
        # L1 has only lo, down; tap needs tun and nftables' NAT modules.
        lines += ["ip link set lo up", "[ -x /bin/load-net-modules ] && /bin/load-net-modules"]
    lines += [f"NB={nb}",
              # SIGTERM to the children of $1 (no pkill in L1's busybox; field 4 of stat is the parent).
              "kill_children() { for p in /proc/[0-9]*; do [ \"$(cut -d' ' -f4 $p/stat 2>/dev/null)\" = \"$1\" ] && "
              "kill -TERM ${p#/proc/}; done; }"]
    for k, (r, i) in enumerate(plan):
        port = ports[k]
        lines += [
            f"echo '@@RUN {i} {r}'",
            # timeout: a VM that does not end after the server's exit is stopped (SIGTERM).
            b.shell_line([tr, "-", w / "vm.out", w / "vm.err", "timeout", str(args.vm_timeout)] + cmds[i](port))
            + f" > {w}/vm.t &",
            "vm=$!",
            f"$NB wait {host} {port} {args.vm_timeout} && $NB send {host} {port} {args.seconds} && "
            f"$NB recv {host} {port} {args.seconds} && $NB echo {host} {port} {args.count} {args.size} && "
            f"$NB quit {host} {port}; rc=$?; echo \"@@CLIENT $rc\"",
            # A failed client never asked the server to exit: stop the VM now (timerun's child is
            # the VMM under busybox's timeout, coreutils' timeout passes SIGTERM on).
            "[ $rc = 0 ] || kill_children $vm",
            "wait $vm",
            f"echo \"@@VM $(cat {w}/vm.t)\"",
            f"echo @@ERR; tail -n 20 {w}/vm.err; echo @@OUT; tail -n 20 {w}/vm.out; echo @@DONE",
        ]
    return "\n".join(lines) + "\n"


def parse(output, plan, names):
    """One record per run, in plan order: {name, round, clients: [json...], client_rc, vm, err, out}."""
    recs = []
    for block in output.split("@@RUN ")[1:]:
        head, _, rest = block.partition("\n")
        name_id, r = head.split()
        clients = [json.loads(ln) for ln in rest.partition("@@CLIENT")[0].splitlines() if ln.startswith("{")]
        client_rc = int(rest.partition("@@CLIENT ")[2].split("\n", 1)[0] or -1)
        vm_line = rest.partition("@@VM ")[2].split("\n", 1)[0]
        try:
            vm = json.loads(vm_line)
        except ValueError:
            vm = None
        recs.append({"name": names[int(name_id)], "round": int(r), "clients": clients, "client_rc": client_rc,
                     "vm": vm, "err": rest.partition("@@ERR\n")[2].partition("@@OUT\n")[0],
                     "out": rest.partition("@@OUT\n")[2].partition("@@DONE")[0]})
    if len(recs) != len(plan):
        b.die(f"expected {len(plan)} runs, got {len(recs)}:\n{output}")
    return recs


def row_of(rec, ok_rc):
    """The numbers of one run, or a loud failure."""
    c, vm = rec["clients"], rec["vm"]
    if rec["client_rc"] != 0 or vm is None or vm["rc"] != ok_rc or len(c) != 4:
        b.die(f"{rec['name']} round {rec['round']}: clients exit {rec['client_rc']}, VM "
              f"{vm and vm['rc']} (want {ok_rc}), {len(c)} of 4 results\nclients: {c}\n"
              f"VM stderr:\n{rec['err']}\nVM stdout:\n{rec['out']}")
    ready, h2g, g2h, echo = c
    return {"h2g": h2g["mib_s"], "g2h": g2h["mib_s"], "rtt_median": echo["median_us"], "rtt_p99": echo["p99_us"],
            "ready": ready["ready_s"], "cpu": (vm["user_ms"] + vm["sys_ms"]) / 1e3,
            "h2g_mib": h2g["bytes"] / 2**20, "g2h_mib": g2h["bytes"] / 2**20}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, help="timed rounds (default 3 nested, 5 direct)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--route", choices=["auto", "direct", "nested"], default="auto")
    ap.add_argument("--seconds", type=float, default=5, help="each throughput direction (default 5)")
    ap.add_argument("--count", type=int, default=1000, help="request/response round trips (default 1000)")
    ap.add_argument("--size", type=int, default=64, help="bytes per request and response (default 64)")
    ap.add_argument("--memory", type=int, default=256, help="guest memory in MiB, every VMM (default 256)")
    ap.add_argument("--vm-timeout", type=int, default=300, help="seconds a VM may live (default 300)")
    ap.add_argument("--no-tap", action="store_true", help="leave out img2vm's tap backend")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args()
    b.need("qemu-system-x86_64", "gcc", "timeout")
    img2vm = b.img2vm_bin()
    facts = b.machine_facts(img2vm)
    nested, kvm = b.kvm_route(img2vm, args.route)
    rounds = args.rounds or (3 if nested else 5)
    names = list(NAMES)
    if args.no_tap:
        names.remove("img2vm tap")
    elif not nested and os.geteuid() != 0:
        b.say("not root: img2vm's tap backend is left out (it needs CAP_NET_ADMIN; or run nested)")
        names.remove("img2vm tap")
    netbench = b.static_bin(Path(__file__).with_name("netbench.c"))

    with tempfile.TemporaryDirectory(prefix="img2vm-bench-net.") as tmp:
        w = Path(tmp)
        image(w / "oci", netbench)
        g = b.Guests(img2vm, w, w / "oci")
        shutil.copy(netbench, w / "netbench")
        shutil.copy(b.timerun_bin(), w / "timerun")
        run_param = "img2vm.run=" + base64.urlsafe_b64encode(json.dumps(USER_NET).encode()).decode().rstrip("=")
        builders = {
            "img2vm user": lambda p: g.img2vm_run(args.memory, "--network", "user", "-p", f"127.0.0.1:{p}:{GUEST_PORT}"),
            "img2vm tap": lambda p: g.img2vm_run(args.memory, "--network", "tap", "-p", f"127.0.0.1:{p}:{GUEST_PORT}"),
            "qemu user": lambda p: g.qemu(args.memory, run_param, [
                "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{p}-:{GUEST_PORT}",
                "-device", "virtio-net-device,netdev=n0"]),
        }
        cmds = [builders[n] for n in names]
        plan = b.schedule(rounds, list(range(len(names))), args.warmup)
        # Host ports: free ones here; in L1 nothing else listens.
        ports = [b.free_port() for _ in plan] if not nested else [20000 + k for k in range(len(plan))]
        (w / "bench.sh").write_text(g.shell_exports() + "\n" + script_for(plan, cmds, ports, w, args, nested))
        per_run = 90 + 2 * args.seconds + args.count * 0.01
        output = b.run_script(w / "bench.sh", nested, g.files(), int(300 + len(plan) * per_run))
        recs = parse(output, plan, names)
        shown = {n: g.shown(builders[n]("PORT")).replace(f"{w}/", "") for n in names}
        kernel_dir = g.kernel.parent.name

    res = {n: [] for n in names}
    for rec in recs:
        row = row_of(rec, 1 if rec["name"] == "qemu user" else 0)  # qemu: isa-debug-exit's (0 << 1) | 1
        tag = "warm-up" if rec["round"] < 0 else f"round {rec['round'] + 1}/{rounds}"
        b.say(f"{tag} {rec['name']}: host->guest {row['h2g']:.1f} MiB/s, guest->host {row['g2h']:.1f} MiB/s, "
              f"round trip median {row['rtt_median']:.0f} µs (p99 {row['rtt_p99']:.0f}), ready {row['ready']:.2f} s, "
              f"VMM CPU {row['cpu']:.2f} s")
        if rec["round"] >= 0:
            res[rec["name"]].append(row)

    med = {n: {k: b.stat([x[k] for x in v])[0] for k, *_ in METRICS} for n, v in res.items()}
    where = b.nested_note(nested, kvm, "throughputs and latencies")
    q, m = med["qemu user"], med["img2vm user"]
    verdict = (f"User-mode networking, img2vm vs qemu (medians; ratios above 1: img2vm faster): host→guest "
               f"{m['h2g']:.1f} vs {q['h2g']:.1f} MiB/s (**{m['h2g'] / q['h2g']:.2f}x**), guest→host {m['g2h']:.1f} "
               f"vs {q['g2h']:.1f} MiB/s (**{m['g2h'] / q['g2h']:.2f}x**), round trip {m['rtt_median']:.0f} vs "
               f"{q['rtt_median']:.0f} µs (**{q['rtt_median'] / m['rtt_median']:.2f}x**).")
    if "img2vm tap" in med:
        t = med["img2vm tap"]
        verdict += (f" img2vm's tap backend vs its user-mode one (above 1: tap faster): host→guest {t['h2g']:.1f} "
                    f"MiB/s ({t['h2g'] / m['h2g']:.2f}x), guest→host {t['g2h']:.1f} MiB/s ({t['g2h'] / m['g2h']:.2f}x), "
                    f"round trip {t['rtt_median']:.0f} µs ({m['rtt_median'] / t['rtt_median']:.2f}x).")
    header = "| contender | " + " | ".join(title for _, title, *_ in METRICS) + " |"
    rows = "\n".join(f"| {n} | " + " | ".join(b.fmt([x[k] for x in v], unit, d) for k, _, unit, d in METRICS) + " |"
                     for n, v in res.items())
    table = f"{header}\n|{'---|' * (len(METRICS) + 1)}\n{rows}"
    print(where)
    print(verdict)
    print(table)
    if args.no_doc:
        return
    moved = " ".join(f"{n}: {b.fmt([x['h2g_mib'] for x in v], 'MiB', 0)} and {b.fmt([x['g2h_mib'] for x in v], 'MiB', 0)}"
                     + (";" if n != names[-1] else ".") for n, v in res.items())
    cmd_lines = "\n".join(f"{shown[n]}    # {n}" for n in names)
    body = f"""## Network (`bench/net/run.py`, issue #7)

{where}

TCP between the host and a guest server published on the host's loopback with `-p`: img2vm's
user-mode backend (libslirp in the runner), img2vm's tap backend (a tap device with nftables
DNAT; the host's kernel does the TCP), and qemu's user-mode networking (its own libslirp) on
`-M microvm` with a virtio-net-device, booting the same vmlinux ({kernel_dir}/vmlinux) and
the same cached rootfs (`snapshot=on`), {args.memory} MiB and one vCPU each. Every guest runs the
same server, `bench/net/netbench.c` built static (the image's CMD `netbench serve {GUEST_PORT}`),
and its eth0 is set up by the same guest init (10.0.2.15/24 via 10.0.2.2 on user-mode, given to
qemu's guest through `img2vm.run=`, the base64url of `{json.dumps(USER_NET)}`; 10.200.0.2/30 on tap). The same program is the host's
client: per VM, **host→guest** writes 128 KiB blocks for {args.seconds:g} s and stops the clock
when the guest has counted every byte; **guest→host** reads for {args.seconds:g} s; **round trip**
is {args.count} request/response exchanges of {args.size} bytes on one connection (TCP_NODELAY,
after {args.count // 10} untimed), median and 99th percentile of each run; **start to first
answer** is from starting the VMM to the server's first answer through the published port (boot
included); **VMM CPU** is the VMM process's user+sys time over the whole run (its vCPU thread, so the
guest's own time, included; boot, all tests, shutdown). {rounds} rounds after {args.warmup} untimed warm-up round(s), the contenders alternating
(order reversed every other round); median (min–max) over the rounds. Bytes moved per run:
{moved}

{verdict}

{table}

Commands (PORT a free host port; DIR the OCI layout; ROOTFS the cached rootfs img2vm made of
it; clients `netbench wait|send|recv|echo|quit 127.0.0.1 PORT ...`; each VMM runs under
`bench/lib/timerun - OUT ERR timeout {args.vm_timeout} ...`):

```sh
IMG2VM_HOME=H img2vm convert oci:DIR:latest            # once, not timed: fills the rootfs cache
{cmd_lines}
```
{"Nested: the same script runs in L1 through `tests/nested/nested-rig.sh run --file img2vm --file img2vm-vmm --file img2vm-init --file qemu-system-x86_64 --file WORKDIR -- sh WORKDIR/bench.sh`, after `ip link set lo up` and `/bin/load-net-modules` (tun and nftables NAT for tap). The host side of every transfer (client, libslirp or the L1 kernel's TCP and nftables) also runs on L1's one emulated CPU, shared with the VMM." if nested else ""}

Machine (shared with other work while measured: see the load average):
{b.facts_md(facts, [["qemu-system-x86_64", "--version"]])}"""
    b.write_section("net", body)


if __name__ == "__main__":
    main()
