// config.json of an OCI bundle read into a run (issue #18): what podman and containerd write,
// read whole; hostile or malformed values refused with the field's name; what a VM cannot do
// listed, never dropped silently.
#include "img2vm/runtime/oci_bundle.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

namespace img2vm::runtime {
namespace {

using nlohmann::json;

// A config.json as `podman run --rm -e A=1 -u 1000:1000 -w /tmp -v /srv:/data:ro --memory 512m
// --cpus 1.5 busybox echo hi` writes it (trimmed to what matters here).
json podman_like() {
  return json::parse(R"({
    "ociVersion": "1.0.2-dev",
    "process": {
      "terminal": false,
      "user": {"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 18},
      "args": ["echo", "hi"],
      "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "A=1",
              "HOSTNAME=abc"],
      "cwd": "/tmp",
      "capabilities": {"bounding": ["CAP_CHOWN"]},
      "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}],
      "noNewPrivileges": true
    },
    "root": {"path": "/var/lib/containers/storage/overlay/x/merged"},
    "hostname": "abc",
    "mounts": [
      {"destination": "/proc", "type": "proc", "source": "proc",
       "options": ["nosuid", "noexec", "nodev"]},
      {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
       "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
      {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
      {"destination": "/data", "type": "bind", "source": "/srv",
       "options": ["ro", "rbind", "rprivate"]},
      {"destination": "/etc/hosts", "type": "bind", "source": "hosts", "options": ["bind"]},
      {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"},
      {"destination": "/weird", "type": "overlay", "source": "overlay"}
    ],
    "annotations": {"io.container.manager": "libpod"},
    "linux": {
      "resources": {"memory": {"limit": 536870912}, "cpu": {"quota": 150000, "period": 100000},
                    "pids": {"limit": 2048}},
      "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/cni-1"},
                     {"type": "mount"}],
      "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"},
      "maskedPaths": ["/proc/kcore"]
    }
  })");
}

bool lists(const OciBundle& b, const std::string& what) {
  for (const auto& u : b.unhonoured)
    if (u.find(what) != std::string::npos) return true;
  return false;
}

TEST(OciBundle, ReadsWhatPodmanWrites) {
  OciBundle b = parse_oci_config(podman_like().dump(), "/run/b");
  EXPECT_EQ(b.oci_version, "1.0.2-dev");
  EXPECT_EQ(b.root, "/var/lib/containers/storage/overlay/x/merged");
  EXPECT_FALSE(b.root_readonly);
  EXPECT_EQ(b.args, (std::vector<std::string>{"echo", "hi"}));
  ASSERT_EQ(b.env.size(), 3u);
  EXPECT_EQ(b.env[1], "A=1");
  EXPECT_EQ(b.cwd, "/tmp");
  EXPECT_EQ(b.uid, 1000u);
  EXPECT_EQ(b.gid, 1000u);
  EXPECT_EQ(b.additional_gids, (std::vector<uint32_t>{10, 20}));
  EXPECT_TRUE(b.no_new_privileges);
  EXPECT_FALSE(b.terminal);
  EXPECT_EQ(b.rlimits, (std::vector<OciRlimit>{{"RLIMIT_NOFILE", 1048576, 1048576}}));
  EXPECT_EQ(b.hostname, "abc");
  ASSERT_EQ(b.mounts.size(), 3u);
  EXPECT_EQ(b.mounts[0].type, Mount::Type::kTmpfs);
  EXPECT_EQ(b.mounts[0].target, "/dev");
  EXPECT_EQ(b.mounts[0].size, 65536u << 10);
  EXPECT_EQ(b.mounts[0].mode, 0755u);
  EXPECT_EQ(b.mounts[1].type, Mount::Type::kBind);
  EXPECT_EQ(b.mounts[1].source, "/srv");
  EXPECT_EQ(b.mounts[1].target, "/data");
  json c = podman_like();
  c["mounts"][3]["destination"] = "//srv/./x/../data/";
  EXPECT_EQ(parse_oci_config(c.dump(), "/run/b").mounts[1].target, "/srv/data") << "normalised";
  EXPECT_TRUE(b.mounts[1].read_only);
  EXPECT_EQ(b.mounts[2].source, "/run/b/hosts") << "a relative source is the bundle's";
  EXPECT_EQ(b.kernel_mounts, (std::vector<std::string>{"/proc", "/sys", "/dev/mqueue"}));
  EXPECT_EQ(b.annotations.at("io.container.manager"), "libpod");
  EXPECT_EQ(b.memory_limit, 536870912u);
  EXPECT_EQ(b.cpus, 2u) << "1.5 CPUs round up";
  EXPECT_EQ(b.network_namespace, "/run/netns/cni-1");
  EXPECT_FALSE(b.host_network);
  for (const char* u : {"umask", "capabilities", "pids", "seccomp", "maskedPaths", "overlay"})
    EXPECT_TRUE(lists(b, u)) << u << " is not listed as unhonoured";
}

TEST(OciBundle, ReadsABundleDirectoryAndResolvesARelativeRoot) {
  TempDir d("oci-bundle");
  json c = podman_like();
  c["root"] = {{"path", "rootfs"}, {"readonly", true}};
  write_file_atomic(d.path() / "config.json", c.dump());
  OciBundle b = load_oci_bundle(d.path());
  EXPECT_EQ(b.root, d.path() / "rootfs");
  EXPECT_TRUE(b.root_readonly);
  try {
    load_oci_bundle(d.path() / "nope");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("no config.json"), std::string::npos);
  }
}

TEST(OciBundle, CpusFromACpuset) {
  json c = podman_like();
  c["linux"]["resources"]["cpu"] = {{"cpus", "0-3,8,10-11"}};
  EXPECT_EQ(parse_oci_config(c.dump(), "/b").cpus, 7u);
  c["linux"]["resources"].erase("cpu");
  c["linux"]["resources"]["memory"]["limit"] = -1;
  OciBundle b = parse_oci_config(c.dump(), "/b");
  EXPECT_FALSE(b.cpus);
  EXPECT_FALSE(b.memory_limit) << "-1 is unlimited";
}

// Each broken field is refused with its name; nothing is guessed.
TEST(OciBundle, MalformedFieldsAreNamed) {
  struct Case {
    std::string pointer;  // JSON pointer of the field set
    json value;
    const char* says;
  };
  const Case cases[] = {
      {"/ociVersion", "2.0.0", "not 1.x"},
      {"/ociVersion", 1, "ociVersion: not a string"},
      {"/process/args", json::array(), "process.args: empty"},
      {"/process/args", {"sh", 3}, "process.args[1]: not a string"},
      {"/process/env", {"NOEQUALS"}, "process.env[0]: not KEY=VALUE"},
      {"/process/cwd", "relative", "process.cwd: not an absolute path"},
      {"/process/user/uid", -1, "process.user.uid: out of range"},
      {"/process/user/gid", 4294967296ull, "process.user.gid: out of range"},
      {"/process/user/additionalGids", {"x"}, "additionalGids[0]: not an integer"},
      {"/process/rlimits/0/soft", 2097152, "soft above hard"},
      {"/process/rlimits/0/type", "NOFILE", "not an RLIMIT_ name"},
      {"/process/terminal", "yes", "process.terminal: not a boolean"},
      {"/root/path", "", "root.path: empty"},
      {"/mounts/3/destination", "data", "mounts[3].destination: not an absolute path"},
      {"/mounts/3/destination", "/", "\"/\" is the root"},
      {"/mounts/3/destination", "/x/..//", "\"/\" is the root"},
      {"/mounts/1/options/3", "size=lots", "mounts[1].options: bad size=lots"},
      {"/mounts/1/options/2", "mode=999", "mounts[1].options: bad mode=999"},
      {"/mounts/3/source", "", "mounts[3].source: missing for a bind mount"},
      {"/linux/resources/cpu/cpus", "3-1", "bad cpu list"},
      {"/hostname", std::string(65, 'h'), "hostname: longer than 64 bytes"},
      {"/annotations/x", 5, "annotations.x: not a string"},
  };
  for (const Case& c : cases) {
    json j = podman_like();
    if (c.pointer == "/linux/resources/cpu/cpus") j["linux"]["resources"]["cpu"] = json::object();
    j[json::json_pointer(c.pointer)] = c.value;
    try {
      parse_oci_config(j.dump(), "/b");
      ADD_FAILURE() << c.pointer << " = " << c.value.dump() << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.says), std::string::npos)
          << c.pointer << ": " << e.what();
    }
  }
  for (const char* missing :
       {"/process", "/root", "/ociVersion", "/process/args", "/process/cwd"}) {
    json j = podman_like();
    const json::json_pointer ptr(missing);
    j[ptr.parent_pointer()].erase(ptr.back());
    EXPECT_THROW(parse_oci_config(j.dump(), "/b"), Error) << missing;
  }
  EXPECT_THROW(parse_oci_config("[]", "/b"), Error);
  EXPECT_THROW(parse_oci_config("{", "/b"), Error);
}

// Sizes and counts a hostile config.json controls are bounded.
TEST(OciBundle, BoundsHold) {
  try {
    parse_oci_config(std::string(OciBundle::kMaxConfigBytes + 1, ' '), "/b");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kLimit);
  }
  json j = podman_like();
  j["process"]["env"] = json::array();
  for (size_t i = 0; i <= OciBundle::kMaxStrings; ++i) j["process"]["env"].push_back("A=1");
  try {
    parse_oci_config(j.dump(), "/b");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kLimit) << e.what();
  }
}

}  // namespace
}  // namespace img2vm::runtime
