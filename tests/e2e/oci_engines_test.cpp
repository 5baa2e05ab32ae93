// img2vm-oci driven by the container engines themselves (issue #18), in the nested rig's Debian
// userland (tests/nested: podman 4.3 with conmon, containerd 1.6 with its runc shim and ctr),
// next to L1's /dev/kvm: every container is a microVM of ours. img2vm-oci, img2vm-vmm,
// img2vm-netns and img2vm-init go into L1 at their build paths (img2vm-oci finds the others
// there), with
// Debian's virtiofsd and the guest kernel. One L1 boot per engine; its script prints one
// "name=value" line per fact and the test checks the lines; on a failure the whole output is
// shown, with podman's --log-level=debug output, the runtime's log, containerd's log and the
// shim's log.json.
//
// Needs: mmdebstrap (the userland is built once, a few minutes), qemu-system-x86_64, the guest
// kernel ($IMG2VM_KERNEL or ~/.cache/img2vm/kernel/*/vmlinux), busybox-static, root.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>

#include "image_builder.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/runtime/kernel.hpp"
#include "nested_rig.hpp"
#include "process.hpp"

using namespace img2vm::testing;
namespace fs = std::filesystem;

namespace {

constexpr const char* kVirtiofsd = "/usr/lib/qemu/virtiofsd";

// The guest kernel as img2vm finds it ($IMG2VM_KERNEL, else the cached build).
std::optional<fs::path> find_kernel() {
  try {
    if (auto k = img2vm::runtime::find_guest_kernel()) return k->path;
  } catch (const img2vm::Error&) {
  }
  return std::nullopt;
}

// Why these tests cannot run here; empty when they can.
std::string skip_reason() {
  if (find_program("mmdebstrap").empty()) return "mmdebstrap not installed (the rig's userland)";
  if (find_program("qemu-system-x86_64").empty()) return "qemu-system-x86_64 not installed";
  if (!find_kernel()) return "no guest kernel: run `img2vm kernel build` or set IMG2VM_KERNEL";
  if (!fs::exists("/bin/busybox")) return "needs busybox-static";
  if (!fs::exists(kVirtiofsd)) return std::string("needs ") + kVirtiofsd + " (qemu-system-common)";
  if (::geteuid() != 0) return "the engines and virtiofsd run as root in L1";
  return {};
}

bool has(const std::string& out, const std::string& what) {
  return out.find(what) != std::string::npos;
}

// The work directory copied into L1 whole: a busybox image as an OCI layout (layout/, tag
// latest) and as an OCI archive (busybox-oci.tar), the guest kernel (vmlinux) and the script
// (run.sh), which starts with W (this directory) and O (img2vm-oci).
struct Workdir {
  img2vm::TempDir tmp{"oci-engines"};
  fs::path path() const { return tmp.path(); }

  void make(const std::string& script) {
    std::vector<Entry> e = {dir("bin"),
                            dir("etc"),
                            dir("tmp", 01777),
                            dir("data"),
                            file("bin/busybox", img2vm::read_file("/bin/busybox", 64 << 20), 0755),
                            file("etc/passwd",
                                 "root:x:0:0:root:/root:/bin/sh\n"
                                 "app:x:1000:1000::/tmp:/bin/sh\n"),
                            file("etc/group", "root:x:0:\napp:x:1000:\n")};
    for (const char* a : {"sh", "echo", "cat", "id", "pwd", "hostname", "sleep", "ls", "grep",
                          "true", "stat", "mount", "mkdir", "httpd", "wget", "ip"})
      e.push_back(symlink_to(std::string("bin/") + a, "busybox"));
    ImageSpec spec;
    spec.layers.push_back(layer(e));
    spec.config.cmd = {"sh"};
    spec.config.env = {"PATH=/bin"};
    write_oci_layout(path() / "layout", {{"latest", build_image(spec)}});
    auto tar = run_command({"tar", "-C", (path() / "layout").string(), "-cf",
                            (path() / "busybox-oci.tar").string(), "."});
    ASSERT_EQ(tar.exit_code, 0) << tar.describe();
    fs::copy_file(*find_kernel(), path() / "vmlinux");
    std::ofstream(path() / "run.sh")
        << "W=" << path().string() << "\nO=" << IMG2VM_OCI_BINARY << "\n"
        << kPrelude << script;
  }

  NestedResult run() const {
    NestedOptions o;
    o.userland = NestedUserland::kDebian;
    o.timeout = std::chrono::seconds(1800);
    return run_nested({"sh", (path() / "run.sh").string()},
                      {IMG2VM_OCI_BINARY, IMG2VM_VMM_BINARY, IMG2VM_INIT_BINARY,
                       IMG2VM_NETNS_BINARY, kVirtiofsd, path()},
                      o);
  }

  // until_ok SECONDS CMD...: runs CMD every 0.2 s until it succeeds, at most SECONDS; says so
  // when it never did. show NAME FILE: a file between markers, for a failure's report. The
  // podman tests' beginning and end (below).
  static constexpr const char* kPrelude = R"SH(
until_ok() {
  limit=$(( $1 * 5 )); shift; i=0
  until "$@"; do
    i=$((i + 1)); if [ $i -ge $limit ]; then echo "gave-up-waiting-for: $*"; return 1; fi
    sleep 0.2
  done
}
show() { echo "@@SHOW $1@@"; cat "$2" 2>&1; echo "@@SHOW-END $1@@"; }
# podman_begin: a syslogd (conmon and podman's cleanup log to syslog at --log-level=debug;
# without a /dev/log the cleanup fails and podman waits 20 s for each container's end, crun's
# as well), the image in podman's storage as localhost/img, P (podman with img2vm-oci), A (the
# kernel by annotation: conmon gives the runtime only a few variables of podman's) and D (where
# the debug output goes). podman_end: that output, img2vm-oci's log and syslog, shown.
podman_begin() {
  busybox syslogd -n -O "$W/syslog" & syslogd=$!
  until_ok 60 test -S /dev/log || exit 89
  skopeo copy -q "oci:$W/layout:latest" containers-storage:localhost/img:latest || exit 90
  P="podman --runtime $O"
  A="--annotation org.img2vm.kernel=$W/vmlinux"
  D="$W/podman-debug"; mkdir -p "$D"
}
podman_end() {
  for f in "$D"/*; do show "podman ${f##*/}" "$f"; done
  show "img2vm-oci.log" /run/img2vm-oci/img2vm-oci.log
  show syslog "$W/syslog"
  kill $syslogd
}
)SH";
};

// Everything a failed test needs to see: the script's output and the rig's messages.
void report(const NestedResult& r) {
  std::cerr << "--- exit " << r.exit_code << (r.timed_out ? " (timed out)" : "")
            << " --- the script's output ---\n"
            << r.output << "\n--- the rig ---\n"
            << r.rig_stderr << "\n";
}

}  // namespace

// podman 4.3 with `--runtime img2vm-oci` and its defaults (conmon, the cgroupfs manager, CNI):
// run --rm gives the workload's output and exit status; -e, -u, -w and -v (read and written
// through virtio-fs) reach the VM; podman's file binds (/etc/hosts, resolv.conf,
// /run/.containerenv) and -v FILE:DEST:ro are copies in the VM (read-only with ro, mode kept);
// the default network (its CNI namespace, which the VM joins) runs too;
// the workload's stdout and stderr apart (run --rm, and logs of a run -d);
// run -d, logs (the workload's lines only: none of the runtime's warnings), exec with its
// status, -u, -w and -e, stop (SIGTERM reaches the workload's trap, whose exit code inspect
// shows), rm, and nothing left behind.
TEST(OciEngines, PodmanRunsContainersAsVms) {
  if (std::string why = skip_reason(); !why.empty()) GTEST_SKIP() << why;
  Workdir w;
  w.make(R"SH(
podman_begin
$P --log-level=debug run --rm --network none $A localhost/img echo hi-from-a-vm >"$W/hi.out" 2>"$D/hi"
echo "hi-rc=$?"; sed 's/^/hi-out: /' "$W/hi.out"
$P --log-level=debug run --rm --network none $A localhost/img sh -c 'exit 3' 2>"$D/exit3"
echo "exit3-rc=$?"
# The workload's stdout and stderr apart (podman's, not --log-level=debug's, on stderr).
$P run --rm --network none $A localhost/img sh -c 'echo to-stdout; echo to-stderr >&2' \
  >"$W/streams.out" 2>"$W/streams.err"
echo "streams-rc=$?"; sed 's/^/streams-out: /' "$W/streams.out"; sed 's/^/streams-err: /' "$W/streams.err"
mkdir -p "$W/host"; echo from-host >"$W/host/in"; chmod 777 "$W/host"
$P --log-level=debug run --rm --network none $A -e FOO=bar -u 1000:1000 -w /tmp -v "$W/host:/data" \
  localhost/img sh -c 'echo "opts foo=$FOO id=$(id -u):$(id -g) pwd=$(pwd) in=$(cat /data/in)";
    echo from-guest >/data/out; grep -q localhost /etc/hosts && echo hosts-has-localhost;
    grep -q "$(hostname)" /etc/hosts && echo hosts-has-hostname; test -f /etc/resolv.conf && echo resolv-ok;
    grep /dev/shm /proc/mounts | cut -d" " -f3 | sed "s/^/shm-fs=/"' 2>"$D/opts"
echo "opts-rc=$?"
echo "host-out=$(cat "$W/host/out") owner=$(stat -c %u:%g "$W/host/out")"
# A file bind (a copy in the VM, read-only with :ro, mode kept), and podman's own file binds:
# /run/.containerenv (the image has no /run: made by the init) and its /etc/hosts, which names
# the container.
printf 'app-setting=1\nsecond line\n' >"$W/f.conf"; chmod 640 "$W/f.conf"
$P --log-level=debug run --rm --name filebind $A -v "$W/f.conf:/etc/app.conf:ro" localhost/img \
  sh -c 'sed "s/^/app-conf: /" /etc/app.conf; stat -c "app-conf-mode=%a owner=%u:%g" /etc/app.conf;
    if echo more >>/etc/app.conf; then echo app-conf-written; else echo app-conf-read-only; fi;
    test -f /run/.containerenv && echo containerenv-exists;
    grep -q filebind /etc/hosts && echo hosts-names-the-container; sed "s/^/hosts: /" /etc/hosts' \
  2>"$D/filebind"
echo "filebind-rc=$?"
echo "f-conf-after=$(cat "$W/f.conf" | tr '\n' '|')"
$P --log-level=debug run --rm $A localhost/img echo on-the-default-network 2>"$D/net"
echo "net-rc=$?"
# A create that fails: podman's error is img2vm-oci's line (no warnings in it).
$P run --rm --network none --annotation org.img2vm.kernel=/no/such/vmlinux localhost/img true \
  >/dev/null 2>"$W/bad.err"
echo "bad-kernel-rc=$?"; sed 's/^/bad-kernel-err: /' "$W/bad.err"

$P --log-level=debug run -d --name d1 $A localhost/img \
  sh -c 'trap "echo got-term; exit 42" TERM; echo started; while :; do sleep 1; done' >"$W/d1.id" 2>"$D/d1"
echo "run-d-rc=$?"
until_ok 300 sh -c "$P logs d1 2>/dev/null | grep -q started"
$P exec d1 sh -c 'echo exec-out $(id -u) $(pwd); exit 4' 2>"$D/exec"
echo "exec-rc=$?"
$P exec -u 1000:1000 -w /tmp -e X=y d1 sh -c 'echo exec2 $(id -u):$(id -g) $(pwd) $X' 2>"$D/exec2"
echo "exec2-rc=$?"
$P inspect --format 'running: {{.State.Status}} pid={{.State.Pid}}' d1
echo "d1-pid-is-the-monitor=$(cat /proc/$($P inspect --format '{{.State.Pid}}' d1)/comm)"
$P --log-level=debug stop -t 120 d1 >/dev/null 2>"$D/stop"
echo "stop-rc=$?"
$P inspect --format 'inspect status={{.State.Status}} exit={{.State.ExitCode}}' d1
$P logs d1 >"$W/d1.logs" 2>&1; sed 's/^/d1-log: /' "$W/d1.logs"
$P rm d1 >/dev/null; echo "rm-rc=$?"
# podman logs of a detached one: both streams, each on its own.
$P run -d --name d2 --network none $A localhost/img sh -c 'echo d2-stdout; echo d2-stderr >&2' \
  >/dev/null 2>"$D/d2"
echo "d2-wait=$($P wait d2)"
$P logs d2 >"$W/d2.out" 2>"$W/d2.err"
sed 's/^/d2-out: /' "$W/d2.out"; sed 's/^/d2-err: /' "$W/d2.err"
$P rm d2 >/dev/null; echo "rm2-rc=$?"
echo "left: containers=$($O list -q | wc -l) vmms=$(pidof img2vm-vmm | wc -w) virtiofsd=$(pidof virtiofsd | wc -w)"
echo "conmon-timeouts=$(cat "$D"/* | grep -c 'Exceeded conmon timeout')"
podman_end
)SH");
  if (HasFatalFailure()) return;
  NestedResult r = w.run();
  const std::string& o = r.output;
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(has(o, "hi-rc=0\nhi-out: hi-from-a-vm\n"));
  EXPECT_TRUE(has(o, "exit3-rc=3\n"));
  EXPECT_TRUE(has(o, "streams-rc=0\nstreams-out: to-stdout\nstreams-err: "));
  EXPECT_TRUE(has(o, "streams-err: to-stderr\n"));
  EXPECT_FALSE(has(o, "streams-out: to-stderr"));
  EXPECT_FALSE(has(o, "streams-err: to-stdout"));
  EXPECT_TRUE(has(o, "opts foo=bar id=1000:1000 pwd=/tmp in=from-host\n"));
  EXPECT_TRUE(has(o, "hosts-has-localhost\nhosts-has-hostname\nresolv-ok\nshm-fs=tmpfs\n"));
  EXPECT_TRUE(has(o, "opts-rc=0\n"));
  EXPECT_TRUE(has(o, "host-out=from-guest owner=1000:1000\n"));
  EXPECT_TRUE(has(o,
                  "app-conf: app-setting=1\napp-conf: second line\n"
                  "app-conf-mode=640 owner=0:0\napp-conf-read-only\n"
                  "containerenv-exists\nhosts-names-the-container\n"));
  EXPECT_TRUE(has(o, "filebind-rc=0\n"));
  EXPECT_TRUE(has(o, "f-conf-after=app-setting=1|second line|\n"));
  EXPECT_TRUE(has(o, "on-the-default-network\nnet-rc=0\n"));
  EXPECT_TRUE(has(o, "bad-kernel-rc=126\n"));
  EXPECT_TRUE(has(o,
                  "annotation org.img2vm.kernel: the kernel image /no/such/vmlinux does not "
                  "exist"));
  EXPECT_FALSE(has(o, "bad-kernel-err: img2vm-oci: warning"));
  EXPECT_TRUE(has(o, "run-d-rc=0\n"));
  EXPECT_FALSE(has(o, "gave-up-waiting-for"));
  EXPECT_TRUE(has(o, "exec-out 0 /\nexec-rc=4\n"));
  EXPECT_TRUE(has(o, "exec2 1000:1000 /tmp y\nexec2-rc=0\n"));
  EXPECT_TRUE(has(o, "running: running pid="));
  EXPECT_TRUE(has(o, "d1-pid-is-the-monitor=img2vm-vmm\n"));
  EXPECT_TRUE(has(o, "stop-rc=0\n"));
  EXPECT_TRUE(has(o, "inspect status=exited exit=42\n"));
  // The workload's lines and nothing else: create's warnings went to the runtime's own log.
  EXPECT_TRUE(has(o, "exit=42\nd1-log: started\nd1-log: got-term\nrm-rc=0\n"));
  EXPECT_TRUE(has(o, "d2-wait=0\nd2-out: d2-stdout\nd2-err: d2-stderr\nrm2-rc=0\n"));
  EXPECT_TRUE(has(o, "left: containers=0 vmms=0 virtiofsd=0\n"));
  EXPECT_TRUE(has(o, "warning: container ")) << "no warnings in img2vm-oci.log";
  // podman had each end from conmon's exit file, never after its 20 s wait for one.
  EXPECT_TRUE(has(o, "conmon-timeouts=0\n"));
  if (HasFailure()) report(r);
}

// podman run -t and -it (process.terminal): conmon gets the terminal's master from create's
// --console-socket; the workload's tty is the guest's console, what it prints comes back through
// podman, what is typed at podman's terminal (script(1) gives it one) reaches the shell, and the
// exit status passes through. The same for podman exec -t and -it into a detached container.
TEST(OciEngines, PodmanRunGivesATerminal) {
  if (std::string why = skip_reason(); !why.empty()) GTEST_SKIP() << why;
  Workdir w;
  w.make(R"SH(
podman_begin
$P --log-level=debug run --rm -t --network none $A localhost/img sh -c 'echo "tty=$(tty)"; exit 6' \
  >"$W/t.out" 2>"$D/t" </dev/null
echo "t-rc=$?"; tr -d '\r' <"$W/t.out" | sed 's/^/t-out: /'
if command -v script >/dev/null; then
  printf 'echo in-$((6*7))\nexit 7\n' >"$W/typed"
  timeout 600 script -qec "$P --log-level=debug run --rm -it --network none $A localhost/img sh 2>$D/it" \
    /dev/null <"$W/typed" >"$W/it.out"
  echo "it-rc=$?"; tr -d '\r' <"$W/it.out" | sed 's/^/it-out: /'
else
  echo "it-rc=no-script"
fi
# podman exec -t and -it into a detached container: img2vm-oci exec --tty, the pty's master at
# conmon's console socket, the guest's process on the terminal.
$P --log-level=debug run -d --name tt --network none $A localhost/img sleep 600 >/dev/null 2>"$D/tt"
echo "tt-rc=$?"
timeout 600 $P --log-level=debug exec -t tt sh -c 'echo "exec-tty=$(tty)"; exit 5' >"$W/et.out" 2>"$D/et" </dev/null
echo "et-rc=$?"; tr -d '\r' <"$W/et.out" | sed 's/^/et-out: /'
if command -v script >/dev/null; then
  printf 'echo ex-$((6*7))\nexit 8\n' >"$W/typed2"
  timeout 600 script -qec "$P --log-level=debug exec -it tt sh 2>$D/eit" /dev/null <"$W/typed2" >"$W/eit.out"
  echo "eit-rc=$?"; tr -d '\r' <"$W/eit.out" | sed 's/^/eit-out: /'
fi
$P rm -f tt >/dev/null 2>"$D/tt-rm"; echo "tt-rm-rc=$?"
echo "left: containers=$($O list -q | wc -l) vmms=$(pidof img2vm-vmm | wc -w)"
podman_end
)SH");
  if (HasFatalFailure()) return;
  NestedResult r = w.run();
  const std::string& o = r.output;
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(has(o, "t-rc=6\n"));
  EXPECT_TRUE(has(o, "t-out: tty=/dev/"));
  EXPECT_FALSE(has(o, "t-out: tty=not a tty"));
  EXPECT_TRUE(has(o, "it-rc=7\n"));
  EXPECT_TRUE(has(o, "\nit-out: in-42\n"));
  EXPECT_TRUE(has(o, "tt-rc=0\n"));
  EXPECT_TRUE(has(o, "et-rc=5\n")) << "podman exec -t: the exit status";
  EXPECT_TRUE(has(o, "et-out: exec-tty=/dev/")) << "podman exec -t: a terminal";
  EXPECT_TRUE(has(o, "eit-rc=8\n")) << "podman exec -it: typed input, the exit status";
  EXPECT_TRUE(has(o, "\neit-out: ex-42\n"));
  EXPECT_TRUE(has(o, "tt-rm-rc=0\n"));
  EXPECT_TRUE(has(o, "left: containers=0 vmms=0\n"));
  if (HasFailure()) report(r);
}

// podman's networking with the VM in the container's place (NetworkMode::kNetns): on the default
// CNI network, run -d -p 8080:80 serves busybox httpd's page to L1 through CNI's portmap (at the
// bridge's address: DNAT to the container's) and at the container's own address; the guest's
// eth0 has the address podman inspect shows, and its resolv.conf the nameservers of podman's;
// on a network of `podman network create`, a second container fetches the first one's page by
// its address. rm -f and network rm leave no VM, virtiofsd, netns or CNI rule behind (the
// monitor gives the namespace's interface its address back when the VM ends).
TEST(OciEngines, PodmanNetworking) {
  if (std::string why = skip_reason(); !why.empty()) GTEST_SKIP() << why;
  Workdir w;
  w.make(R"SH(
podman_begin
serve() { echo "mkdir -p /tmp/www && echo $1 >/tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"; }
fetch() { curl -sf --max-time 5 "$1" >"$W/fetched" 2>/dev/null; }

$P --log-level=debug run -d --name web -p 8080:80 $A localhost/img sh -c "$(serve page-of-web)" \
  >/dev/null 2>"$D/web"
echo "web-rc=$?"
until_ok 300 fetch http://10.88.0.1:8080/ && echo "published=$(cat "$W/fetched")"
ip_p=$($P inspect --format '{{.NetworkSettings.IPAddress}}' web)
echo "web-ip=$ip_p"
fetch "http://$ip_p/" && echo "direct=$(cat "$W/fetched")"
ip_g=$($P exec web ip -4 -o addr show dev eth0 | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p')
echo "guest-ip=$ip_g"
[ -n "$ip_g" ] && [ "$ip_g" = "$ip_p" ] && echo "ip-same"
ns_e=$(grep '^nameserver [0-9.]*$' "$($P inspect --format '{{.ResolvConfPath}}' web)" | head -3)
ns_g=$($P exec web grep '^nameserver' /etc/resolv.conf)
echo "engine-dns=$(echo $ns_e) guest-dns=$(echo $ns_g)"
[ -n "$ns_g" ] && [ "$ns_e" = "$ns_g" ] && echo "dns-same"

$P network create --ipv6 --subnet 10.89.7.0/24 --subnet fd00:89:7::/64 n2 >/dev/null
echo "network-create-rc=$?"
$P --log-level=debug run -d --name srv --network n2 $A localhost/img sh -c "$(serve page-of-srv)" \
  >/dev/null 2>"$D/srv"
echo "srv-rc=$?"
ip_s=$($P inspect --format '{{(index .NetworkSettings.Networks "n2").IPAddress}}' srv)
echo "srv-ip=$ip_s"
until_ok 300 fetch "http://$ip_s/"
$P --log-level=debug run --rm --network n2 $A localhost/img wget -q -O - "http://$ip_s/" \
  >"$W/cli.out" 2>"$D/cli"
echo "cli-rc=$?"; sed 's/^/from-cli: /' "$W/cli.out"
# n2 is dual-stack: the guest takes the veth's IPv6 address and default route as well.
ip6_s=$($P inspect --format '{{(index .NetworkSettings.Networks "n2").GlobalIPv6Address}}' srv)
echo "srv-ip6=$ip6_s"
g6=$($P exec srv ip -6 -o addr show dev eth0 | sed -n 's/.* inet6 \(fd00:[0-9a-f:]*\)\/.*/\1/p')
echo "guest-ip6=$g6"
[ -n "$g6" ] && [ "$g6" = "$ip6_s" ] && echo "ip6-same"
echo "guest-default6=$($P exec srv ip -6 route show default | head -1 | cut -d' ' -f1-3)"
until_ok 300 curl -g -sf --max-time 5 "http://[$ip6_s]/" -o "$W/fetched6" && echo "direct6=$(cat "$W/fetched6")"
$P --log-level=debug run --rm --network n2 $A localhost/img wget -q -O - "http://[$ip6_s]/" \
  >"$W/cli6.out" 2>"$D/cli6"
echo "cli6-rc=$?"; sed 's/^/from-cli6: /' "$W/cli6.out"

$P rm -f web srv >/dev/null; echo "rm-rc=$?"
$P network rm n2 >/dev/null; echo "network-rm-rc=$?"
echo "left: containers=$($O list -q | wc -l) vmms=$(pidof img2vm-vmm | wc -w) virtiofsd=$(pidof virtiofsd | wc -w) netns=$(ip netns list | wc -l)"
# CNI's bridge plugin drops a container's masquerading rule only when it finds the container's
# address on the interface: the monitor gave it back when the VM ended.
echo "masquerade-rules-left=$(iptables -t nat -S POSTROUTING | grep -c ' id: ')"
podman_end
)SH");
  if (HasFatalFailure()) return;
  NestedResult r = w.run();
  const std::string& o = r.output;
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(has(o, "web-rc=0\n"));
  EXPECT_TRUE(has(o, "published=page-of-web\n")) << "podman's -p 8080:80 (CNI portmap)";
  EXPECT_TRUE(has(o, "web-ip=10.88."));
  EXPECT_TRUE(has(o, "direct=page-of-web\n")) << "at the container's address";
  EXPECT_TRUE(has(o, "ip-same\n")) << "the guest has podman's address for the container";
  EXPECT_TRUE(has(o, "dns-same\n")) << "the guest's nameservers are podman's resolv.conf's";
  EXPECT_TRUE(has(o, "network-create-rc=0\nsrv-rc=0\nsrv-ip=10.89.7."));
  EXPECT_TRUE(has(o, "cli-rc=0\nfrom-cli: page-of-srv\n")) << "container to container";
  EXPECT_TRUE(has(o, "srv-ip6=fd00:89:7:"));
  EXPECT_TRUE(has(o, "ip6-same\n")) << "the guest has podman's IPv6 address for the container";
  EXPECT_TRUE(has(o, "guest-default6=default via fd00:89:7::1\n")) << "and its IPv6 route";
  EXPECT_TRUE(has(o, "direct6=page-of-srv\n")) << "at the container's IPv6 address";
  EXPECT_TRUE(has(o, "cli6-rc=0\nfrom-cli6: page-of-srv\n")) << "container to container, IPv6";
  EXPECT_FALSE(has(o, "gave-up-waiting-for"));
  EXPECT_TRUE(has(o, "rm-rc=0\nnetwork-rm-rc=0\n"));
  EXPECT_TRUE(has(o, "left: containers=0 vmms=0 virtiofsd=0 netns=0\n"));
  EXPECT_TRUE(has(o, "masquerade-rules-left=0\n"));
  if (HasFailure()) report(r);
}

// podman pods, the kernel given by `--runtime-flag kernel=PATH` alone (img2vm-oci's global
// --kernel, which podman passes to every runtime call, through conmon too): a plain run; then
// `pod create -p 8081:80`, whose infra container (podman's pause image, /catatonit -P, no
// annotation) img2vm-oci runs as a host process in the pod's namespace, no VM; the pod's first
// container, busybox httpd in a VM, takes the pod's address and serves L1 at 127.0.0.1:8081
// (CNI's portmap); a second container of the pod runs with loopback only and says so in the
// runtime's log; pod rm -f leaves no VM, virtiofsd, namespace, sandbox process or conmon.
TEST(OciEngines, PodmanPods) {
  if (std::string why = skip_reason(); !why.empty()) GTEST_SKIP() << why;
  Workdir w;
  w.make(R"SH(
podman_begin
K="--runtime-flag kernel=$W/vmlinux"
serve() { echo "mkdir -p /tmp/www && echo $1 >/tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"; }
fetch() { curl -sf --max-time 5 "$1" >"$W/fetched" 2>/dev/null; }
sandboxes() { grep -lx img2vm-sandbox /proc/[0-9]*/comm 2>/dev/null | wc -l; }

$P $K --log-level=debug run --rm --network none localhost/img echo kernel-by-flag >"$W/flag.out" 2>"$D/flag"
echo "flag-rc=$?"; sed 's/^/flag-out: /' "$W/flag.out"

$P $K --log-level=debug pod create -p 8081:80 --name p >/dev/null 2>"$D/pod-create"
echo "pod-create-rc=$?"
$P $K --log-level=debug run -d --pod p --name app localhost/img sh -c "$(serve page-of-pod)"   >/dev/null 2>"$D/app"
echo "app-rc=$?"
infra=$($P pod inspect --format '{{.InfraContainerID}}' p)
infra_pid=$($P inspect --format '{{.State.Pid}}' "$infra")
echo "infra-status=$($P inspect --format '{{.State.Status}}' "$infra") comm=$(cat /proc/$infra_pid/comm)"
show infra-config.json "$($O state "$infra" | sed -n 's/.*"bundle": "\(.*\)".*/\1/p')/config.json"
[ "$(readlink /proc/$infra_pid/ns/net)" != "$(readlink /proc/self/ns/net)" ] && echo "infra-in-its-own-netns"
until_ok 300 fetch http://10.88.0.1:8081/ && echo "pod-published-bridge=$(cat "$W/fetched")"
until_ok 30 fetch http://127.0.0.1:8081/ && echo "pod-published=$(cat "$W/fetched")"
ip_pod=$($P inspect --format '{{.NetworkSettings.IPAddress}}' "$infra")
ip_g=$($P exec app ip -4 -o addr show dev eth0 | sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p')
echo "pod-ip=$ip_pod app-ip=$ip_g"
[ -n "$ip_g" ] && [ "$ip_g" = "$ip_pod" ] && echo "app-has-the-pod-ip"

$P $K --log-level=debug run --rm --pod p localhost/img   sh -c 'echo "second-addrs=$(ip -4 -o addr show | grep -vc " lo ")"' >"$W/second.out" 2>"$D/second"
echo "second-rc=$?"; cat "$W/second.out"
echo "loopback-warnings=$(grep -c "its interface is another VM's" /run/img2vm-oci/img2vm-oci.log)"

$P $K --log-level=debug pod rm -f p >/dev/null 2>"$D/pod-rm"; echo "pod-rm-rc=$?"
echo "left: containers=$($O list -q | wc -l) vmms=$(pidof img2vm-vmm | wc -w) virtiofsd=$(pidof virtiofsd | wc -w) netns=$(ip netns list | wc -l) sandboxes=$(sandboxes) conmon=$(pidof conmon | wc -w)"
podman_end
)SH");
  if (HasFatalFailure()) return;
  NestedResult r = w.run();
  const std::string& o = r.output;
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(has(o, "flag-rc=0\nflag-out: kernel-by-flag\n")) << "the kernel by --runtime-flag";
  EXPECT_TRUE(has(o, "pod-create-rc=0\napp-rc=0\n"));
  EXPECT_TRUE(has(o, "infra-status=running comm=img2vm-sandbox\n")) << "the infra: no VM";
  EXPECT_TRUE(has(o, "infra-in-its-own-netns\n"));
  EXPECT_TRUE(has(o, "pod-published-bridge=page-of-pod\n")) << "pod create -p 8081:80";
  EXPECT_TRUE(has(o, "pod-published=page-of-pod\n")) << "pod create -p 8081:80, at 127.0.0.1";
  EXPECT_TRUE(has(o, "app-has-the-pod-ip\n"));
  EXPECT_TRUE(has(o, "second-rc=0\nsecond-addrs=0\n")) << "the pod's second VM: loopback only";
  EXPECT_TRUE(has(o, "loopback-warnings=1\n"));
  EXPECT_FALSE(has(o, "gave-up-waiting-for"));
  EXPECT_TRUE(has(o, "pod-rm-rc=0\n"));
  EXPECT_TRUE(has(o, "left: containers=0 vmms=0 virtiofsd=0 netns=0 sandboxes=0 conmon=0\n"));
  if (HasFailure()) report(r);
}

// containerd 1.6 with its runc shim (io.containerd.runc.v2) and `ctr run --runc-binary
// img2vm-oci`: the workload's output and exit status; the shim's --root
// (/run/containerd/runc/default) makes the VM's vsock socket paths long; ctr --rm leaves nothing.
TEST(OciEngines, ContainerdRunsAContainerAsAVm) {
  if (std::string why = skip_reason(); !why.empty()) GTEST_SKIP() << why;
  Workdir w;
  w.make(R"SH(
# containerd's environment reaches the shim and the runtime: the kernel goes by IMG2VM_KERNEL.
IMG2VM_KERNEL="$W/vmlinux" containerd >"$W/containerd.log" 2>&1 &
until_ok 300 sh -c '[ -S /run/containerd/containerd.sock ] && ctr version >/dev/null 2>&1' || exit 90
ctr images import --base-name localhost/img "$W/busybox-oci.tar" >/dev/null || exit 91
ctr run --rm --runc-binary "$O" localhost/img:latest c1 sh -c 'echo hi-from-a-vm; exit 5' >"$W/c1.out" 2>&1
echo "ctr-rc=$?"; sed 's/^/c1-out: /' "$W/c1.out"
ctr run --rm --runc-binary "$O" localhost/img:latest c2 sh -c 'echo "id=$(id -u) pwd=$(pwd)"' >"$W/c2.out" 2>&1
echo "ctr2-rc=$?"; sed 's/^/c2-out: /' "$W/c2.out"
echo "left: containers=$($O --root /run/containerd/runc/default list -q | wc -l) vmms=$(pidof img2vm-vmm | wc -w)"
show containerd.log "$W/containerd.log"
for f in $(find /run/containerd -name log.json); do show "$f" "$f"; done
show img2vm-oci.log /run/containerd/runc/default/img2vm-oci.log
)SH");
  if (HasFatalFailure()) return;
  NestedResult r = w.run();
  const std::string& o = r.output;
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(has(o, "ctr-rc=5\nc1-out: hi-from-a-vm\n"));
  EXPECT_TRUE(has(o, "ctr2-rc=0\nc2-out: id=0 pwd=/\n"));
  EXPECT_TRUE(has(o, "left: containers=0 vmms=0\n"));
  if (HasFailure()) report(r);
}
