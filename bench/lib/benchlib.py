"""Shared helpers for the img2vm benchmarks (bench/*/run.py). Python 3 standard library only.

- measuring a command: wall time and its peak RSS (ru_maxrss from wait4, i.e. the child and the
  descendants it waited for), alternating the contenders round by round;
- making realistic OCI image layouts from this host's own files (no network);
- a throwaway docker-registry on a free 127.0.0.1 port;
- machine facts, and writing one replaceable section of docs/benchmarks.md.
"""
import argparse
import atexit
import datetime
import gzip
import hashlib
import io
import json
import os
import platform
import random
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "benchmarks.md"
SECTIONS = ["pull", "convert", "boot", "net", "fs", "exec", "oci", "snapshot"]  # order of the sections in docs/benchmarks.md
FIXED_MTIME = 1700000000  # every tar entry gets this mtime, so layers are reproducible


def say(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def die(msg):
    say(msg)
    sys.exit(1)


def img2vm_bin():
    b = Path(os.environ.get("IMG2VM_BIN") or ROOT / "build/default/cmd/img2vm/img2vm")
    if not b.is_file():
        die(f"{b} not built: run scripts/setup.sh && scripts/build.sh default (or set IMG2VM_BIN)")
    return b.resolve()


def vmm_bin(img2vm):
    """img2vm-vmm, the VMM process `img2vm run` execs: beside img2vm in the build tree."""
    v = Path(os.environ.get("IMG2VM_VMM") or Path(img2vm).parent / "img2vm-vmm")
    if not v.is_file():
        die(f"{v} not built: run scripts/build.sh default (or set IMG2VM_VMM)")
    return v.resolve()


def need(*programs):
    missing = [p for p in programs if not shutil.which(p)]
    if missing:
        die(f"missing programs: {' '.join(missing)} (run scripts/setup.sh)")


def run(cmd, **kw):
    """Runs cmd (not timed), failing loudly with its output."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        die(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stdout}{r.stderr}")
    return r.stdout


_static_bins = {}


def static_bin(src):
    """The C program `src`, compiled static (gcc -O2) once per benchmark run into a temp dir, so
    that it also runs where there is no C library (L1, a guest)."""
    src = Path(src)
    if src not in _static_bins:
        d = tempfile.mkdtemp(prefix=f"img2vm-bench-{src.stem}.")
        atexit.register(shutil.rmtree, d, True)
        run(["gcc", "-O2", "-static", "-Wall", "-o", Path(d) / src.stem, src])
        _static_bins[src] = Path(d) / src.stem
    return _static_bins[src]


def timerun_bin():
    """bench/lib/timerun.c, compiled (static) once per benchmark run into a temp dir."""
    return static_bin(Path(__file__).with_name("timerun.c"))


def measure(cmd, env=None, cwd=None, marker="-"):
    """Runs cmd once under timerun; returns {wall_s, marker_s, maxrss_mib, cpu_s, rc, stdout,
    stderr}. (Measuring from Python directly would not do: a child forked from Python starts with
    Python's RSS, and ru_maxrss keeps it across exec.)"""
    with tempfile.TemporaryDirectory(prefix="img2vm-bench-run.") as d:
        so, se = Path(d) / "stdout", Path(d) / "stderr"
        r = subprocess.run([str(timerun_bin()), marker, str(so), str(se)] + [str(c) for c in cmd],
                           env=env, cwd=cwd, capture_output=True, text=True)
        if r.returncode != 0 or not r.stdout.strip():
            die(f"timerun failed ({r.returncode}): {r.stderr}")
        t = json.loads(r.stdout)
        return {"wall_s": t["wall_ms"] / 1e3, "marker_s": t["marker_ms"] / 1e3 if t["marker_ms"] >= 0 else None,
                "maxrss_mib": t["maxrss_kib"] / 1024, "cpu_s": (t["user_ms"] + t["sys_ms"]) / 1e3, "rc": t["rc"],
                "stdout": so.read_text(errors="replace"), "stderr": se.read_text(errors="replace")}


def framed_runs(output):
    """The runs a benchmark's script framed as `@@RUN HEAD...`, timerun's JSON line, `@@OUT`, the
    run's stdout, `@@ERR`, its stderr, `@@DONE`: [(HEAD's words, timing dict, stdout, stderr)]."""
    runs = []
    for blk in output.split("@@RUN ")[1:]:
        head, _, rest = blk.partition("\n")
        timing, _, rest = rest.partition("\n")
        out = rest.partition("@@OUT\n")[2].partition("@@ERR\n")[0]
        err = rest.partition("@@ERR\n")[2].partition("@@DONE")[0]
        try:
            t = json.loads(timing)
        except ValueError:
            die(f"run {head}: no timing line:\n{blk}")
        runs.append((head.split(), t, out, err))
    return runs


def schedule(rounds, names, warmup=1):
    """[(round, name), ...]: `warmup` untimed rounds (round < 0), then `rounds` rounds; each
    round has every contender once, the order reversed every other round (the first as given)."""
    plan = []
    for i, r in enumerate(range(-warmup, rounds)):
        plan += [(r, n) for n in (names if i % 2 == 0 else names[::-1])]
    return plan


def alternate(rounds, contenders, warmup=1):
    """contenders: {name: fn(round) -> dict of numbers}, run as schedule() says.
    Returns {name: [result of each timed round, ...]}."""
    results = {n: [] for n in contenders}
    for r, n in schedule(rounds, list(contenders), warmup):
        res = contenders[n](r)
        tag = "warm-up" if r < 0 else f"round {r + 1}/{rounds}"
        say(f"{tag} {n}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in res.items()))
        if r >= 0:
            results[n].append(res)
    return results


def stat(values):
    """(median, min, max) of a list of numbers."""
    return statistics.median(values), min(values), max(values)


def fmt(values, unit="s", digits=3):
    med, lo, hi = stat(values)
    return f"{med:.{digits}f} {unit} ({lo:.{digits}f}–{hi:.{digits}f})"


def mib(n):
    return f"{n / 2**20:.1f} MiB"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """A docker-registry on 127.0.0.1:free port with storage in a temp dir, stopped on exit."""

    def __init__(self, workdir):
        self.dir = Path(workdir) / "registry"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"

    def __enter__(self):
        cfg = self.dir / "config.yml"
        cfg.write_text("version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\n"
                       f"storage: {{filesystem: {{rootdirectory: {self.dir}/storage}}}}\n"
                       f"http: {{addr: \"{self.host}\"}}\n")
        self.log = open(self.dir / "registry.log", "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=self.log, stderr=self.log)
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
                return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        die(f"docker-registry did not start; see {self.dir}/registry.log")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()
        self.log.close()

    def cpu_s(self):
        """CPU seconds (user+sys) the registry process has used so far."""
        return proc_cpu_s(self.proc.pid)


def proc_cpu_s(pid):
    """CPU seconds (user+sys) of a running process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s():
    """CPU seconds all CPUs have spent busy since boot (everything but idle and iowait)."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# OCI image layouts made from local files


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to `out` (may be None)."""

    def __init__(self, out):
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def writable(self):
        return True

    def write(self, b):
        self.sha.update(b)
        self.size += len(b)
        if self.out:
            self.out.write(b)
        return len(b)


class LayerWriter:
    """Writes one tar+gzip layer blob into an OCI layout's blobs/sha256/ in a single pass.
    All entries are owned by root and carry FIXED_MTIME."""

    def __init__(self, layout, compresslevel=6):
        self.blobs = Path(layout) / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp = tempfile.NamedTemporaryFile(dir=self.blobs, delete=False)
        self.gz_hash = _Hashing(self.tmp)
        self.gz = gzip.GzipFile(fileobj=self.gz_hash, mode="wb", compresslevel=compresslevel, mtime=0)
        self.tar_hash = _Hashing(self.gz)
        self.tar = tarfile.open(fileobj=self.tar_hash, mode="w|", format=tarfile.PAX_FORMAT)
        self.dirs = set()
        self.content_bytes = 0  # regular file bytes
        self.entries = 0

    def _add(self, info, data=None):
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = FIXED_MTIME
        self.tar.addfile(info, data)
        self.entries += 1
        if info.isreg():
            self.content_bytes += info.size

    def add_dir(self, name, mode=0o755):
        name = name.strip("/")
        if not name or name in self.dirs:
            return
        self.add_dir(os.path.dirname(name))
        self.dirs.add(name)
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, mode
        self._add(info)

    def add_bytes(self, name, data, mode=0o644):
        self.add_dir(os.path.dirname(name))
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        self._add(info, io.BytesIO(data))

    def add_symlink(self, name, target):
        self.add_dir(os.path.dirname(name))
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, target
        self._add(info)

    def add_host_path(self, path):
        """Adds a host file, symlink or directory at its own path (without its contents)."""
        name = str(path).lstrip("/")
        if os.path.isdir(path) and not os.path.islink(path):
            self.add_dir(name, os.lstat(path).st_mode & 0o7777)
            return
        self.add_dir(os.path.dirname(name))
        info = self.tar.gettarinfo(str(path), arcname=name)
        if info.isreg():
            with open(path, "rb") as f:
                self._add(info, f)
        elif info.issym() or info.islnk():
            self._add(info)

    def close(self):
        """Finishes the blob; returns (OCI descriptor, diff_id)."""
        self.tar.close()
        self.gz.close()
        self.tmp.close()
        digest = "sha256:" + self.gz_hash.sha.hexdigest()
        os.replace(self.tmp.name, self.blobs / digest[7:])
        desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
                "size": self.gz_hash.size}
        return desc, "sha256:" + self.tar_hash.sha.hexdigest()


def _put_blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    (Path(layout) / "blobs" / "sha256" / digest).write_bytes(data)
    return "sha256:" + digest, len(data)


def write_layout(layout, layers, cmd, tag="latest"):
    """Writes config, manifest and index.json for `layers` [(descriptor, diff_id), ...] into the
    OCI layout dir whose blobs LayerWriter already wrote. Returns the manifest digest."""
    layout = Path(layout)
    created = datetime.datetime.fromtimestamp(FIXED_MTIME, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {"architecture": "amd64", "os": "linux", "created": created,
              "config": {"Cmd": cmd, "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
              "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
              "history": [{"created": created, "created_by": f"img2vm bench layer {i + 1}"} for i in range(len(layers))]}
    cdigest, csize = _put_blob(layout, json.dumps(config, sort_keys=True).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest,
                           "size": csize},
                "layers": [desc for desc, _ in layers]}
    mdigest, msize = _put_blob(layout, json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest, "size": msize,
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return mdigest


# A Debian-like image made of this host's own files: shared libraries, Python modules, docs,
# compilers, headers and locales (mostly compressible, like real images), plus one layer of
# pseudo-random bytes (incompressible, like already-compressed assets). Fractions of the total.
DEBIAN_LIKE_LAYERS = [
    ("shared libraries", ["/usr/lib/x86_64-linux-gnu"], 0.28),
    ("python", ["/usr/lib/python3", "/usr/lib/python3.11"], 0.12),
    ("docs and man pages", ["/usr/share/doc", "/usr/share/man"], 0.08),
    ("toolchain", ["/usr/lib/gcc", "/usr/libexec", "/usr/bin"], 0.18),
    ("headers and locales", ["/usr/include", "/usr/share/locale", "/usr/share/i18n"], 0.10),
    ("random data", None, 0.12),
    ("perl and llvm", ["/usr/share/perl", "/usr/share/perl5", "/usr/lib/llvm-14"], 0.12),
]


def _walk(top):
    """Paths under top in sorted order (directories before their contents), no symlink follow."""
    if not os.path.isdir(top):
        return
    yield top
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for n in sorted(filenames):
            yield os.path.join(dirpath, n)
        for n in dirnames:
            yield os.path.join(dirpath, n)


def make_debian_like_image(layout, total_mib=160, seed=1):
    """Writes a multi-layer image of about total_mib MiB of file content (uncompressed) into the
    OCI layout `layout` (tag "latest"). Returns a summary dict."""
    seen = set()
    layers, summary = [], []
    for name, sources, frac in DEBIAN_LIKE_LAYERS:
        budget = int(total_mib * 2**20 * frac)
        w = LayerWriter(layout)
        if sources is None:
            rnd = random.Random(seed)
            for i in range((budget + (8 << 20) - 1) >> 23):
                w.add_bytes(f"opt/data/blob{i:02d}.bin", rnd.randbytes(min(8 << 20, budget - (i << 23))))
        else:
            # Each layer takes from its own sources first, then from /usr at large.
            for path in (p for top in sources + ["/usr/share", "/usr/lib"] for p in _walk(top)):
                if w.content_bytes >= budget:
                    break
                if path in seen:
                    continue
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if os.path.isfile(path) and not os.path.islink(path):
                    if st.st_size > budget - w.content_bytes + (1 << 20) or not os.access(path, os.R_OK):
                        continue
                seen.add(path)
                w.add_host_path(path)
        desc, diff_id = w.close()
        layers.append((desc, diff_id))
        summary.append({"name": name, "entries": w.entries, "content": w.content_bytes, "blob": desc["size"]})
    digest = write_layout(layout, layers, ["/bin/sh"])
    return {"manifest": digest, "layers": summary,
            "content": sum(l["content"] for l in summary), "compressed": sum(l["blob"] for l in summary)}


def describe_image(img):
    rows = "\n".join(f"| {i + 1} | {l['name']} | {l['entries']} | {mib(l['content'])} | {mib(l['blob'])} |"
                     for i, l in enumerate(img["layers"]))
    return ("| layer | content | tar entries | file bytes | gzip blob |\n|---|---|---|---|---|\n" + rows +
            f"\n| | total | {sum(l['entries'] for l in img['layers'])} | {mib(img['content'])} | "
            f"{mib(img['compressed'])} |\n")


# ---------------------------------------------------------------------------------------------
# Guests: img2vm and qemu -M microvm booting the same kernel and rootfs, directly or nested

# img2vm's kernel command line (docs/guest-abi.md §2), which qemu is given too.
GUEST_APPEND = ("console=ttyS0 quiet root=/dev/vda rw init=/.img2vm/init reboot=k panic=-1 "
                "tsc=reliable no_timer_check")


def busybox_writer(layout, applets=("sh",)):
    """A LayerWriter for `layout` that already holds a static /bin/busybox (each of `applets` a
    link to it) and /tmp; add what else the image needs, then close() it."""
    busybox = Path("/bin/busybox")
    if not busybox.is_file() or b"ld-linux" in busybox.read_bytes()[:4096]:
        die("needs a static /bin/busybox (Debian package busybox-static)")
    w = LayerWriter(layout)
    w.add_bytes("bin/busybox", busybox.read_bytes(), 0o755)
    for a in applets:
        w.add_symlink(f"bin/{a}", "busybox")
    w.add_dir("tmp", 0o1777)
    return w


def kvm_route(img2vm, choice="auto"):
    """(nested, kvm): whether the VMMs must run inside the nested rig's L1 (choice "nested", or
    "auto" without hardware KVM, e.g. PVM), and `img2vm info`'s kvm object. Says so loudly."""
    kvm = json.loads(run([img2vm, "info", "--json"]))["kvm"]
    nested = choice == "nested" or (choice == "auto" and kvm.get("kind") != "hardware")
    if nested:
        for line in ["!" * 78, f"NO HARDWARE KVM HERE (/dev/kvm: {kvm.get('kind')}; {kvm.get('detail', '')}).",
                     "The VMMs run NESTED inside the rig's L1 guest, which is qemu TCG (an emulated CPU):",
                     "absolute numbers are meaningless; only the comparison between the contenders means something.",
                     "!" * 78]:
            say(line)
    return nested, kvm


def vm_bench_parser(doc, memory_mib, direct_rounds):
    """An argument parser with the options every benchmark of VMs has: --rounds, --warmup,
    --route, --memory and --no-doc."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, help=f"timed rounds (default 3 nested, {direct_rounds} direct)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    ap.add_argument("--route", choices=["auto", "direct", "nested"], default="auto")
    ap.add_argument("--memory", type=int, default=memory_mib,
                    help=f"guest memory in MiB, every VMM (default {memory_mib})")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    return ap


def nested_note(nested, kvm, what="the numbers"):
    """The opening paragraph of a section: where the VMMs ran."""
    if not nested:
        return "Hardware KVM: every VMM ran directly on this host."
    return ("**NESTED: this host has no hardware KVM** (`img2vm info`: "
            f"{kvm.get('kind')}; {kvm.get('detail', '')}). Every VMM ran inside the nested rig's L1 "
            "guest, `qemu-system-x86_64 -accel tcg -cpu max` with the Debian cloud kernel's kvm-amd "
            "(tests/nested/nested-rig.sh): every guest instruction, every VM exit and the host side "
            f"itself run on an emulated CPU, so **{what} are an emulated CPU's and meaningless in "
            "absolute terms**; only the comparison between the contenders, measured side by side in "
            "the same L1, means something.")


class Guests:
    """What both VMMs boot, set up in the work dir `w`: the guest init (IMG2VM_INIT, else the
    build's), the kernel (`img2vm kernel build`, copied to w/vmlinux), the OCI layout's rootfs as
    img2vm's cached conversion under w/home (qemu opens that file with snapshot=on), and qemu's
    microvm firmware and PVH option ROM copied to w/qemu-data (passed with -L, so that L1 finds
    its copies). Every path stays under `w`, img2vm, the init and qemu: files() for the rig."""

    def __init__(self, img2vm, w, layout, tag="latest"):
        self.img2vm, self.w = img2vm, Path(w)
        self.init = Path(os.environ.get("IMG2VM_INIT") or ROOT / "build/default/guest/img2vm-init").resolve()
        if not self.init.is_file():
            die(f"{self.init} not built (scripts/build.sh default) and IMG2VM_INIT not set")
        self.kernel = Path(run([img2vm, "kernel", "build"]).strip().splitlines()[-1])
        self.vmlinux = self.w / "vmlinux"
        shutil.copy(self.kernel, self.vmlinux)
        self.home, self.tmp, self.qemu_data = self.w / "home", self.w / "tmp", self.w / "qemu-data"
        self.image = f"oci:{layout}:{tag}"
        self.env = dict(os.environ, IMG2VM_HOME=str(self.home), IMG2VM_INIT=str(self.init))
        run([img2vm, "convert", self.image], env=self.env)
        cached = sorted(self.home.rglob("*.ext4"))
        if len(cached) != 1:
            die(f"expected one cached rootfs under {self.home}, found {cached}")
        self.rootfs = cached[0]
        self.qemu_data.mkdir()
        for f in ["qboot.rom", "bios-microvm.bin", "pvh.bin"]:
            if (Path("/usr/share/qemu") / f).exists():
                shutil.copy(Path("/usr/share/qemu") / f, self.qemu_data / f)
        self.tmp.mkdir()  # TMPDIR: qemu's snapshot=on overlay

    def img2vm_run(self, memory_mib, *opts):
        return [self.img2vm, "run", "--json", "--kernel", self.vmlinux, "--memory", f"{memory_mib}M", *opts, self.image]

    def qemu(self, memory_mib, append_extra="", devices=()):
        append = GUEST_APPEND + (" " + append_extra if append_extra else "")
        return ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host", "-m", f"{memory_mib}M",
                "-L", self.qemu_data, "-nodefaults", "-no-reboot", "-nographic", "-serial", "stdio",
                "-kernel", self.vmlinux, "-append", append,
                "-drive", f"id=root,file={self.rootfs},format=raw,if=none,snapshot=on",
                "-device", "virtio-blk-device,drive=root", *devices, "-device", "isa-debug-exit,iobase=0xf4,iosize=1"]

    def shell_exports(self):
        return f"export IMG2VM_HOME={self.home} IMG2VM_INIT={self.init} TMPDIR={self.tmp}"

    def files(self):
        return [self.img2vm, vmm_bin(self.img2vm), self.init, shutil.which("qemu-system-x86_64"), self.w]

    def shown(self, cmd):
        """cmd as a shell line for the docs, with the work dir's paths named."""
        text = shell_line(cmd)
        for path, name in [(self.rootfs, "ROOTFS"), (self.vmlinux, "VMLINUX"), (self.qemu_data, "QEMU_DATA"),
                           (self.image, "oci:DIR:latest"), (self.img2vm, "img2vm")]:
            text = text.replace(str(path), name)
        return text


def run_script(script, nested, files, timeout, memory_mib=2048, userland=None):
    """Runs `sh script` here, or inside the nested rig's L1 with `files` copied in (on the
    rig's Debian userland with userland="debian"); returns its output (stdout and stderr),
    failing loudly when it fails."""
    if not nested:
        r = measure(["sh", script])
        return r["stdout"] + r["stderr"]
    say(f"starting the nested rig (several minutes; timeout {timeout} s)")
    cmd = [ROOT / "tests/nested/nested-rig.sh", "run", "--timeout", str(timeout), "--memory", str(memory_mib)]
    if userland:
        cmd += ["--userland", userland]
    for f in files:
        cmd += ["--file", f]
    r = measure(cmd + ["--", "sh", script])
    if r["rc"] != 0:
        die(f"nested rig failed ({r['rc']}):\n{r['stdout']}\n{r['stderr']}")
    return r["stdout"]


# ---------------------------------------------------------------------------------------------
# Reporting


def _version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def machine_facts(img2vm):
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        info = json.loads(run([img2vm, "info", "--json"]))
        kvm = info["kvm"]
        kvm_kind = kvm.get("kind", "?") + (f" ({kvm['detail']})" if kvm.get("detail") else "")
    except (ValueError, KeyError, SystemExit):
        kvm_kind = "?"
    mem = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = f"{int(line.split()[1]) // 1024} MiB"
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip() or "?"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(), "cpu model": model, "memory": mem, "kernel": platform.release(),
            "kvm": kvm_kind, "load average at start": load, "img2vm": f"{_version([img2vm, '--version'])} (git {commit})"}


def facts_md(facts, extra_versions=()):
    lines = [f"- {k}: {v}" for k, v in facts.items()]
    lines += [f"- {_version(c)}" for c in extra_versions]
    return "\n".join(lines) + "\n"


def results_table(results, head, digits=3, unit="s"):
    """A markdown table of {name: [values]}: one row per name with its median (min-max)."""
    return f"| {head} | median (min-max) |\n|---|---|\n" + "\n".join(
        f"| {n} | {fmt(v, unit, digits)} |" for n, v in results.items())


def print_result(*parts):
    """What a benchmark found, printed whether or not it goes into docs/benchmarks.md."""
    for p in parts:
        print(p)


def write_section(name, body):
    """Replaces (or adds) the section between this benchmark's markers in docs/benchmarks.md."""
    begin, end = f"<!-- bench/{name}: begin (written by bench/{name}/run.py) -->", f"<!-- bench/{name}: end -->"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        # Insert before the first later section's marker, else at the end.
        later = [f"<!-- bench/{s}: begin" for s in SECTIONS[SECTIONS.index(name) + 1:]] if name in SECTIONS else []
        pos = min((text.index(m) for m in later if m in text), default=None)
        text = text.rstrip() + "\n\n" + block + "\n" if pos is None else text[:pos] + block + "\n\n" + text[pos:]
    DOC.write_text(text)
    say(f"wrote the {name} section of {DOC.relative_to(ROOT)}")


def shell_line(cmd):
    return " ".join(shlex.quote(str(c)) for c in cmd)
