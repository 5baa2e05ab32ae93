#!/usr/bin/env python3
"""bench/convert (issue #4): `img2vm convert` against `umoci unpack` + `mkfs.ext4 -d`.

Builds a Debian-like multi-layer image from this host's files (bench/lib) as an OCI layout, then
alternates, each into a fresh output: img2vm convert oci:DIR -o out.ext4 (fresh IMG2VM_HOME,
so a cold rootfs cache); the peer pipeline `umoci unpack --rootless` then `mkfs.ext4 -d` into a
file of the same size as img2vm's; and the decompression floors: zcat and (if isal is
installed) igzip -dc of all layers to /dev/null. Every output must pass `e2fsck -fn`. Reports
wall time, CPU and peak RSS (median, min–max), output sizes, and writes the section "convert"
of docs/benchmarks.md.

    bench/convert/run.py [--rounds 5] [--mib 160 --mib 500] [--no-doc]

Each --mib gives one image of that much content (default: 160 and 500, the two sizes issue #4
asks for), measured on its own.
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import benchlib as b  # noqa: E402


def fs_facts(path):
    """Apparent size, allocated bytes and the bytes in use inside the ext4 file system."""
    st = os.stat(path)
    h = b.run(["dumpe2fs", "-h", path])
    get = lambda k: int(re.search(rf"^{k}:\s+(\d+)", h, re.M).group(1))  # noqa: E731
    used = (get("Block count") - get("Free blocks")) * get("Block size")
    inodes = get("Inode count") - get("Free inodes")
    return {"size": st.st_size, "allocated": st.st_blocks * 512, "used": used, "inodes": inodes,
            "journal": "has_journal" in re.search(r"^Filesystem features:(.*)$", h, re.M).group(1)}


def e2fsck_ok(path):
    r = b.measure(["e2fsck", "-fn", path])
    if r["rc"] != 0:
        b.die(f"e2fsck -fn {path} failed ({r['rc']}):\n{r['stdout']}{r['stderr']}")
    return True


def bench_image(mib, rounds, img2vm, igzip):
    """Builds one image of `mib` MiB and runs every contender on it; returns the report's parts."""
    with tempfile.TemporaryDirectory(prefix="img2vm-bench-convert.") as tmp:
        work = Path(tmp)
        src = work / "src"
        b.say(f"making a {mib} MiB Debian-like image from this host's files")
        img = b.make_debian_like_image(src, mib)
        manifest = json.loads((src / "blobs" / "sha256" / img["manifest"][7:]).read_text())
        layer_files = [src / "blobs" / "sha256" / d["digest"][7:] for d in manifest["layers"]]

        convert_cmd = [img2vm, "convert", f"oci:{src}:latest", "-o", work / "img2vm.ext4"]
        unpack_cmd = ["umoci", "unpack", "--rootless", "--image", f"{src}:latest", work / "bundle"]
        size = {}  # the ext4 size mkfs gets: img2vm's output size, learned in the warm-up round
        mkfs_cmd = lambda: ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E", "root_owner=0:0",  # noqa: E731
                            "-d", work / "bundle" / "rootfs", work / "mkfs.ext4", f"{size['k']}k"]
        outputs = {}

        def clean(*names):
            for n in names:
                p = work / n
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

        def img2vm_convert(_):
            clean("home", "img2vm.ext4")
            r = b.measure(convert_cmd, env=dict(os.environ, IMG2VM_HOME=str(work / "home")))
            if r["rc"] != 0:
                b.die(f"img2vm convert failed:\n{r['stderr']}")
            e2fsck_ok(work / "img2vm.ext4")
            outputs["img2vm convert"] = fs_facts(work / "img2vm.ext4")
            size["k"] = (work / "img2vm.ext4").stat().st_size // 1024
            return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "maxrss_mib": r["maxrss_mib"]}

        def umoci_mkfs(_):
            clean("bundle", "mkfs.ext4")
            u = b.measure(unpack_cmd)
            if u["rc"] != 0:
                b.die(f"umoci unpack failed:\n{u['stderr']}")
            m = b.measure(mkfs_cmd())
            if m["rc"] != 0:
                b.die(f"mkfs.ext4 -d failed:\n{m['stderr']}")
            e2fsck_ok(work / "mkfs.ext4")
            outputs["umoci unpack + mkfs.ext4 -d"] = fs_facts(work / "mkfs.ext4")
            clean("bundle")
            return {"wall_s": u["wall_s"] + m["wall_s"], "cpu_s": u["cpu_s"] + m["cpu_s"],
                    "maxrss_mib": max(u["maxrss_mib"], m["maxrss_mib"]), "unpack_s": u["wall_s"], "mkfs_s": m["wall_s"]}

        def floor(cmd):
            def f(_):
                r = b.measure(["sh", "-c", f'exec {cmd} "$@" >/dev/null', "floor"] + layer_files)
                if r["rc"] != 0:
                    b.die(f"{cmd} failed:\n{r['stderr']}")
                return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "maxrss_mib": r["maxrss_mib"]}
            return f

        contenders = {"img2vm convert": img2vm_convert, "umoci unpack + mkfs.ext4 -d": umoci_mkfs,
                      "zcat floor": floor("zcat")}
        if igzip:
            contenders["igzip floor"] = floor("igzip -dc")
        res = b.alternate(rounds, contenders)

    med = {n: b.stat([x["wall_s"] for x in v])[0] for n, v in res.items()}
    mine = med["img2vm convert"]
    rss = b.stat([x["maxrss_mib"] for x in res["img2vm convert"]])[2]
    peer = med["umoci unpack + mkfs.ext4 -d"]
    verdict = f"umoci+mkfs/img2vm = **{peer / mine:.1f}x** (target ≥ 10x: {'met' if peer / mine >= 10 else 'NOT met'}); "
    if igzip:
        f = mine / med["igzip floor"]
        verdict += f"img2vm/igzip floor = **{f:.2f}x** (target ≤ 2x: {'met' if f <= 2 else 'NOT met'}); "
    verdict += f"img2vm peak RSS max {rss:.1f} MiB (target < 256 MiB: {'met' if rss < 256 else 'NOT met'})."
    met = peer / mine >= 10 and (not igzip or mine / med["igzip floor"] <= 2) and rss < 256
    rows = "\n".join(
        f"| {n} | {b.fmt([x['wall_s'] for x in v])} | {med[n] / mine:.2f}x | "
        f"{b.fmt([x['cpu_s'] for x in v], 's', 2)} | {b.fmt([x['maxrss_mib'] for x in v], 'MiB', 1)} |"
        for n, v in res.items())
    split = res["umoci unpack + mkfs.ext4 -d"]
    split_line = (f"The peer's time splits into umoci unpack {b.fmt([x['unpack_s'] for x in split])} and "
                  f"mkfs.ext4 -d {b.fmt([x['mkfs_s'] for x in split])}.")
    out_rows = "\n".join(
        f"| {n} | {b.mib(o['size'])} | {b.mib(o['allocated'])} | {b.mib(o['used'])} | {o['inodes']} | "
        f"{'yes' if o['journal'] else 'no'} | clean |" for n, o in outputs.items())
    return {"mib": mib, "verdict": verdict, "rows": rows, "split_line": split_line, "out_rows": out_rows,
            "img": img, "met": met}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mib", type=int, action="append",
                    help="image content in MiB, uncompressed; repeat for several images (default 160 and 500)")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args()
    b.need("umoci", "mkfs.ext4", "e2fsck", "dumpe2fs", "zcat")
    igzip = shutil.which("igzip")
    if not igzip:
        b.say("igzip (Debian package isal) not installed: skipping the igzip floor")
    img2vm = b.img2vm_bin()
    facts = b.machine_facts(img2vm)

    results = [bench_image(mib, args.rounds, img2vm, igzip) for mib in (args.mib or [160, 500])]
    for r in results:
        print(f"{r['mib']} MiB: {r['verdict']}")
        print(r["rows"])
        print(r["out_rows"])
    if args.no_doc:
        return
    parts = []
    for r in results:
        img = r["img"]
        parts.append(f"""### {r['mib']} MiB image

{r['verdict']}

| contender | wall | vs img2vm | CPU (user+sys) | peak RSS |
|---|---|---|---|---|
{r['rows']}

{r['split_line']}

Outputs (last round; both pass `e2fsck -fn` in every round):

| output | file size | allocated on disk | used in the fs | inodes used | journal | e2fsck -fn |
|---|---|---|---|---|---|---|
{r['out_rows']}

The image ({len(img['layers'])} layers, built from this host's own files by `bench/lib/benchlib.py`):

{b.describe_image(img)}""")
    all_met = all(r["met"] for r in results)
    sizes = " and ".join(f"{r['mib']} MiB" for r in results)
    body = f"""## Convert (`bench/convert/run.py`, issue #4)

Images of {sizes} of content (the issue asks for ≥ 150 MB and ≥ 500 MB uncompressed), each
measured on its own: {args.rounds} rounds after one untimed warm-up, contenders alternating (order
reversed every other round), a fresh output each time and a fresh `IMG2VM_HOME` (cold rootfs
cache); the layers are in the page cache. Median (min–max). Every target met on every image:
**{'yes' if all_met else 'no'}**.

""" + "\n".join(parts) + f"""
Commands (`DIR` the OCI layout; mkfs gets the size of img2vm's output and no journal, as img2vm
writes none; as root `umoci unpack --rootless` keeps the image's owners, as an ordinary user it
would make every file the user's):

```sh
IMG2VM_HOME=$(mktemp -d) img2vm convert oci:DIR:latest -o img2vm.ext4
umoci unpack --rootless --image DIR:latest bundle
mkfs.ext4 -q -F -O ^has_journal -E root_owner=0:0 -d bundle/rootfs mkfs.ext4 SIZE
zcat LAYER... >/dev/null
igzip -dc LAYER... >/dev/null
e2fsck -fn img2vm.ext4; e2fsck -fn mkfs.ext4
```

Machine (shared with other work while measured: see the load average):
{b.facts_md(facts, [["umoci", "--version"], ["mkfs.ext4", "-V"], ["igzip", "--version"]])}"""
    b.write_section("convert", body)


if __name__ == "__main__":
    main()
