#!/usr/bin/env python3
"""bench/pull (issue #3): `img2vm pull` against `skopeo copy` from a local docker-registry.

Builds a Debian-like multi-layer image from this host's files (bench/lib), pushes it with skopeo
to a docker-registry on a free 127.0.0.1 port, then alternates, with a cold destination each
time: img2vm pull (fresh IMG2VM_HOME), skopeo copy to oci:DIR, skopeo copy to dir:DIR, and two
floors: every blob fetched in parallel by one curl to /dev/null, and the same into files (no
verification, no fsync). Reports wall time, CPU, the registry's CPU, how busy the whole machine
was, and peak RSS (median, min–max) and writes the section "pull" of docs/benchmarks.md.

    bench/pull/run.py [--rounds 5] [--mib 160] [--jobs N] [--no-doc]
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import benchlib as b  # noqa: E402


def tree_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink())


def busy_share(runs):
    """Median share (%) of the machine's CPU capacity that was busy during the runs."""
    return b.stat([100 * x["busy_s"] / (x["wall_s"] * os.cpu_count()) for x in runs])[0]


def sha256_seconds(nbytes):
    """CPU seconds hashlib's SHA-256 (OpenSSL) needs for nbytes here, in 1 MiB updates (best of 3)."""
    chunk = os.urandom(1 << 20)

    def once():
        h = hashlib.sha256()
        t = time.process_time()
        for _ in range(64):
            h.update(chunk)
        return time.process_time() - t

    return min(once() for _ in range(3)) * nbytes / (64 << 20)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mib", type=int, default=160, help="image content in MiB, uncompressed (default 160)")
    ap.add_argument("--jobs", type=int, help="pass --jobs N to img2vm pull (default: img2vm's own)")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args()
    b.need("docker-registry", "skopeo", "curl")
    img2vm = b.img2vm_bin()
    facts = b.machine_facts(img2vm)

    with tempfile.TemporaryDirectory(prefix="img2vm-bench-pull.") as tmp:
        work = Path(tmp)
        b.say(f"making a {args.mib} MiB Debian-like image from this host's files")
        img = b.make_debian_like_image(work / "src", args.mib)
        with b.Registry(work) as reg:
            ref = f"{reg.host}/bench/pull:latest"
            b.run(["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", f"oci:{work}/src:latest",
                   f"docker://{ref}"])
            b.say(f"pushed {ref}: {len(img['layers'])} layers, {b.mib(img['compressed'])} compressed")
            manifest = json.loads(b.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"]))
            blobs = [manifest["config"]] + manifest["layers"]
            total = sum(d["size"] for d in blobs)
            urls = [f"http://{reg.host}/v2/bench/pull/blobs/{d['digest']}" for d in blobs]

            pull_cmd = [img2vm, "pull", "--json"] + (["--jobs", str(args.jobs)] if args.jobs else []) + [ref]
            skopeo = ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}"]

            def curl_into(outs):
                """One curl fetching every blob in parallel, blob i into outs[i]."""
                cmd = ["curl", "-fsS", "--parallel", "--parallel-max", "16"]
                for out, u in zip(outs, urls):
                    cmd += ["-o", str(out), u]
                return cmd

            curl_cmd = curl_into(["/dev/null"] * len(urls))

            def fresh(name):
                d = work / name
                shutil.rmtree(d, ignore_errors=True)
                return d

            def img2vm_pull(_):
                home = fresh("home")
                r = b.measure(pull_cmd, env=dict(os.environ, IMG2VM_HOME=str(home)))
                if r["rc"] != 0:
                    b.die(f"img2vm pull failed:\n{r['stderr']}")
                blob_dir = home / "oci" / "blobs" / "sha256"
                missing = [d["digest"] for d in blobs if not (blob_dir / d["digest"][7:]).is_file()]
                if missing:
                    b.die(f"img2vm pull did not store {missing}")
                return {"wall_s": r["wall_s"], "maxrss_mib": r["maxrss_mib"], "cpu_s": r["cpu_s"],
                        "bytes": tree_bytes(home / "oci")}

            def skopeo_copy(kind):
                def f(_):
                    dest = fresh(f"skopeo-{kind}")
                    r = b.measure(skopeo + [f"{kind}:{dest}" + (":latest" if kind == "oci" else "")])
                    if r["rc"] != 0:
                        b.die(f"skopeo copy to {kind}: failed:\n{r['stderr']}")
                    return {"wall_s": r["wall_s"], "maxrss_mib": r["maxrss_mib"], "cpu_s": r["cpu_s"],
                            "bytes": tree_bytes(dest)}
                return f

            def curl_floor(_):
                r = b.measure(curl_cmd)
                if r["rc"] != 0:
                    b.die(f"curl failed:\n{r['stderr']}")
                return {"wall_s": r["wall_s"], "maxrss_mib": r["maxrss_mib"], "cpu_s": r["cpu_s"], "bytes": total}

            # The same parallel fetch into files: what storing the bytes costs before any
            # verification or fsync.
            def curl_files(_):
                dest = fresh("curl-files")
                dest.mkdir()
                r = b.measure(curl_into([dest / str(i) for i in range(len(urls))]))
                if r["rc"] != 0:
                    b.die(f"curl failed:\n{r['stderr']}")
                return {"wall_s": r["wall_s"], "maxrss_mib": r["maxrss_mib"], "cpu_s": r["cpu_s"],
                        "bytes": tree_bytes(dest)}

            # Every contender also gets the registry's CPU and the whole machine's busy CPU time
            # during its run: with a local registry on a small machine the pull is CPU-bound.
            def with_load(f):
                def g(r):
                    reg0, busy0 = reg.cpu_s(), b.machine_busy_s()
                    out = f(r)
                    out["registry_cpu_s"] = reg.cpu_s() - reg0
                    out["busy_s"] = b.machine_busy_s() - busy0
                    return out
                return g

            contenders = {"img2vm pull": img2vm_pull, "skopeo copy oci:": skopeo_copy("oci"),
                          "skopeo copy dir:": skopeo_copy("dir"), "curl floor": curl_floor,
                          "curl to files": curl_files}
            res = b.alternate(args.rounds, {n: with_load(f) for n, f in contenders.items()})
    sha_s = sha256_seconds(total)

    med = {n: b.stat([x["wall_s"] for x in v])[0] for n, v in res.items()}
    ratio = med["img2vm pull"] / med["skopeo copy oci:"]
    rss = b.stat([x["maxrss_mib"] for x in res["img2vm pull"]])[2]
    rows = "\n".join(
        f"| {n} | {b.fmt([x['wall_s'] for x in v])} | {med[n] / med['skopeo copy oci:']:.2f}x | "
        f"{b.fmt([x['cpu_s'] for x in v], 's', 2)} | {b.stat([x['registry_cpu_s'] for x in v])[0]:.2f} s | "
        f"{busy_share(v):.0f}% | {b.fmt([x['maxrss_mib'] for x in v], 'MiB', 1)} | "
        f"{b.mib(v[0]['bytes'])} | {total / 2**20 / med[n]:.0f} MiB/s |"
        for n, v in res.items())
    ncpu = os.cpu_count()
    img_cpu = b.stat([x["cpu_s"] for x in res["img2vm pull"]])[0]
    reg_cpu = b.stat([x["registry_cpu_s"] for x in res["img2vm pull"]])[0]
    files_ratio = med["curl to files"] / med["skopeo copy oci:"]
    floor_s = med["curl to files"] + sha_s / ncpu
    budget = (f"Where img2vm's time goes on this machine ({ncpu} CPUs): during its pull the machine is busy "
              f"{busy_share(res['img2vm pull']):.0f}% of the time ({ncpu} CPUs x wall). Its own CPU is "
              f"{img_cpu:.2f} s, of which hashing every byte with SHA-256 (OpenSSL, this machine's rate: "
              f"{total / 2**20 / sha_s:.0f} MiB/s on one CPU) is at least {sha_s:.2f} s; the registry serving the "
              f"blobs takes another {reg_cpu:.2f} s. The same bytes fetched by curl into files, with no "
              f"verification and no fsync, take {files_ratio:.2f}x skopeo's time here; adding only the hashing, "
              f"spread perfectly over all {ncpu} CPUs, gives a floor of {floor_s:.3f} s = "
              f"{floor_s / med['skopeo copy oci:']:.2f}x for a pull that verifies every byte (img2vm: "
              f"{ratio:.2f}x, {med['img2vm pull'] / floor_s:.2f}x that floor).")
    verdict = (f"img2vm/skopeo = **{ratio:.2f}x** (target ≤ 0.40x: {'met' if ratio <= 0.4 else 'NOT met'}); "
               f"img2vm peak RSS max {rss:.1f} MiB (target < 64 MiB: {'met' if rss < 64 else 'NOT met'}); "
               f"floor/img2vm = {med['curl floor'] / med['img2vm pull']:.2f}.")
    print(verdict)
    print(rows)
    print(budget)
    if args.no_doc:
        return
    body = f"""## Pull (`bench/pull/run.py`, issue #3)

{args.rounds} rounds after one untimed warm-up, contenders alternating (order reversed every other
round), cold destination each time (a fresh `IMG2VM_HOME` / empty target directory), registry
storage in the page cache. Wall time and CPU (user+sys) as median (min–max).

{verdict}

| contender | wall | vs skopeo oci: | CPU | registry CPU | machine busy | peak RSS | bytes written | rate |
|---|---|---|---|---|---|---|---|---|
{rows}

{budget}

The image ({img['manifest'][:19]}…, {len(img['layers'])} layers, built from this host's own files by
`bench/lib/benchlib.py`; the issue asks for ≥ 200 MiB compressed, run with `--mib 560` for that):

{b.describe_image(img)}
Commands (`REF` = `127.0.0.1:PORT/bench/pull:latest` on a `docker-registry` started by the script):

```sh
IMG2VM_HOME=$(mktemp -d) img2vm {b.shell_line(pull_cmd[1:-1])} REF
skopeo --insecure-policy copy --quiet --src-tls-verify=false docker://REF oci:DIR:latest
skopeo --insecure-policy copy --quiet --src-tls-verify=false docker://REF dir:DIR
curl -fsS --parallel --parallel-max 16 -o /dev/null http://127.0.0.1:PORT/v2/bench/pull/blobs/DIGEST ...   # all {len(blobs)} blobs
curl -fsS --parallel --parallel-max 16 -o DIR/0 http://127.0.0.1:PORT/v2/bench/pull/blobs/DIGEST ...   # curl to files
```

"registry CPU" is the registry process's user+sys time during the run; "machine busy" is all
CPUs' busy time (not idle, not I/O wait) over CPUs x wall time.

Machine (shared with other work while measured: see the load average):
{b.facts_md(facts, [["skopeo", "--version"], ["curl", "--version"]])}"""
    b.write_section("pull", body)


if __name__ == "__main__":
    main()
