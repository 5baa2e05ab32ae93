// The nested rig's Debian userland (`nested-rig.sh run --userland debian`): the container
// engines that will drive img2vm-oci (issue #18) run in L1 next to its /dev/kvm. Podman with
// crun and CNI bridge networking, and containerd with ctr, run a busybox image that this test
// builds; each script prints what it saw and the test checks the lines.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "image_builder.hpp"
#include "img2vm/base/fd.hpp"
#include "nested_rig.hpp"
#include "process.hpp"

using namespace img2vm::testing;
namespace fs = std::filesystem;

namespace {

NestedOptions debian() {
  NestedOptions o;
  o.userland = NestedUserland::kDebian;
  o.timeout = std::chrono::seconds(600);
  return o;
}

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

bool has(const std::string& out, const std::string& what) {
  return out.find(what) != std::string::npos;
}

// A directory to copy into L1 whole: busybox-static as an OCI image layout (layout/, tag
// latest), the same as an OCI archive (busybox-oci.tar), and the script `script` as run.sh.
struct Workdir {
  img2vm::TempDir dir{"nested-userland"};
  fs::path layout() const { return dir.path() / "layout"; }
  fs::path archive() const { return dir.path() / "busybox-oci.tar"; }
  fs::path script() const { return dir.path() / "run.sh"; }
};

void make_workdir(const Workdir& w, const std::string& script) {
  std::vector<Entry> e = {dir("bin"),
                          dir("etc"),
                          dir("tmp", 01777),
                          file("bin/busybox", file_bytes("/bin/busybox"), 0755),
                          file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                          file("etc/group", "root:x:0:\n")};
  for (const char* a : {"sh", "echo", "ip", "cat", "hostname", "true"})
    e.push_back(symlink_to(std::string("bin/") + a, "busybox"));
  ImageSpec spec;
  spec.layers.push_back(layer(e));
  spec.config.cmd = {"sh"};
  spec.config.env = {"PATH=/bin"};
  write_oci_layout(w.layout(), {{"latest", build_image(spec)}});
  auto tar = run_command({"tar", "-C", w.layout().string(), "-cf", w.archive().string(), "."});
  ASSERT_EQ(tar.exit_code, 0) << tar.describe();
  std::ofstream(w.script()) << "W=" << w.dir.path().string() << "\n" << script;
}

}  // namespace

TEST(NestedUserland, HasTheEnginesKvmAndCgroupV2) {
  if (find_program("mmdebstrap").empty()) GTEST_SKIP() << "mmdebstrap not installed";
  auto r = run_nested({"sh", "-c",
                       "test -c /dev/kvm && echo kvm-ok; podman --version; crun --version; "
                       "ctr --version; stat -fc 'cgroup fs %T' /sys/fs/cgroup; hostname; exit 4"},
                      {}, debian());
  EXPECT_EQ(r.exit_code, 4) << r.describe();
  EXPECT_TRUE(has(r.output, "kvm-ok")) << r.describe();
  EXPECT_TRUE(has(r.output, "podman version 4.")) << r.describe();
  EXPECT_TRUE(has(r.output, "crun version 1.")) << r.describe();
  EXPECT_TRUE(has(r.output, "ctr github.com/containerd/containerd 1.6.")) << r.describe();
  EXPECT_TRUE(has(r.output, "cgroup fs cgroup2fs")) << r.describe();
  EXPECT_TRUE(has(r.output, "nested-l1")) << r.describe();
}

// Podman's defaults there: crun, the cgroupfs manager and the file events logger (no systemd),
// overlay storage on L1's ext4 root, CNI networking.
TEST(NestedUserland, PodmanRunsContainersWithCrunAndABridge) {
  if (find_program("mmdebstrap").empty()) GTEST_SKIP() << "mmdebstrap not installed";
  Workdir w;
  make_workdir(w, R"(
skopeo copy -q "oci:$W/layout:latest" containers-storage:localhost/busybox:latest || exit 90
podman info --format 'info {{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}} {{.Host.EventLogger}} {{.Store.GraphDriverName}} {{.Host.NetworkBackend}}'
podman run --rm --network none localhost/busybox echo hi from podman
podman run --rm --network none localhost/busybox sh -c 'exit 7'
echo "exit status $?"
podman run --rm localhost/busybox ip -4 -o addr show eth0
echo "bridged status $?"
)");
  if (HasFatalFailure()) return;
  auto r = run_nested({"sh", w.script().string()}, {w.dir.path()}, debian());
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_TRUE(has(r.output, "info crun cgroupfs file overlay cni")) << r.describe();
  EXPECT_TRUE(has(r.output, "\nhi from podman\n")) << r.describe();
  EXPECT_TRUE(has(r.output, "exit status 7")) << r.describe();
  // The default network "podman": a veth into the cni-podman0 bridge, 10.88.0.0/16.
  EXPECT_TRUE(has(r.output, "inet 10.88.")) << r.describe();
  EXPECT_TRUE(has(r.output, "bridged status 0")) << r.describe();
}

// containerd 1.6 started by hand, the image imported from an OCI archive, containers run by
// the runc shim with crun as its OCI runtime binary (how another runtime plugs in).
TEST(NestedUserland, ContainerdRunsAContainer) {
  if (find_program("mmdebstrap").empty()) GTEST_SKIP() << "mmdebstrap not installed";
  Workdir w;
  make_workdir(w, R"(
containerd >/tmp/containerd.log 2>&1 &
i=0
until [ -S /run/containerd/containerd.sock ] && ctr version >/dev/null 2>&1; do
  i=$((i + 1))
  if [ $i -gt 1200 ]; then echo "containerd did not answer in 120 s"; cat /tmp/containerd.log; exit 90; fi
  sleep 0.1
done
ctr images import --base-name localhost/busybox "$W/busybox-oci.tar" || exit 91
ctr run --rm --runc-binary /usr/bin/crun localhost/busybox:latest c1 echo hi from containerd
ctr run --rm --runc-binary /usr/bin/crun localhost/busybox:latest c2 sh -c 'exit 7'
echo "exit status $?"
)");
  if (HasFatalFailure()) return;
  auto r = run_nested({"sh", w.script().string()}, {w.dir.path()}, debian());
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_TRUE(has(r.output, "\nhi from containerd\n")) << r.describe();
  EXPECT_TRUE(has(r.output, "exit status 7")) << r.describe();
}
