// MachineConfig <-> JSON (machine_json.hpp): what img2vm run hands to img2vm-vmm and what a
// user's --spec file holds. Every field survives the round trip; mistakes name the member.
#include "img2vm/vm/machine_json.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "virtio_net.hpp"

using namespace img2vm;
using namespace img2vm::vm;

namespace {

std::string error_of(const std::string& text) {
  try {
    machine_config_from_json(text);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << e.what();
    return e.what();
  }
  return "(accepted)";
}

}  // namespace

TEST(MachineJson, EveryFieldSurvivesTheRoundTrip) {
  MachineConfig c;
  c.memory_mib = 1536;
  c.hugepages = true;
  c.vcpus = 3;
  c.kernel = "/k/vmlinux";
  c.cmdline = "console=ttyS0 quiet img2vm.run=\"a b\"";
  c.initrd = "/k/initrd.cpio";
  c.disks = {{"/r/root.ext4", DiskMode::kCopyOnWrite, "img2vm-root"},
             {"/proc/self/fd/7", DiskMode::kReadOnly, ""},
             {"data.img", DiskMode::kReadWrite, "data"}};
  c.net.emplace();
  c.net->mac = {0x02, 0xab, 0xcd, 0xef, 0x01, 0x23};
  c.net->mtu = 9000;
  c.net->user.outbound = false;
  c.net->user.host_loopback = true;
  c.net->user.forwards = {{PortProtocol::kTcp, "127.0.0.1", 8080, 80},
                          {PortProtocol::kUdp, "::1", 0, 53}};
  c.net->tap = TapFdConfig{5, {{PortProtocol::kUdp, "0.0.0.0", 5353, 53}}};
  c.console_out_fd = -1;
  c.console_err_fd = 12;
  c.console_in_fd = 0;
  c.ready_fd = 11;
  c.console_input = ConsoleInput::kAtWorkloadExec;
  c.timeout = std::chrono::milliseconds(90000);
  c.kvm_device = "/dev/kvm-other";
  c.seccomp = SeccompMode::kErrno;
  c.fs = {{"src", "/run/vfs-src.sock", -1}, {"cache", "", 9}};
  c.vsock = VsockConfig{42, "/run/vm/vsock.sock"};

  MachineConfig r = machine_config_from_json(machine_config_to_json(c));
  ASSERT_TRUE(r.vsock);
  EXPECT_EQ(r.vsock->guest_cid, 42u);
  EXPECT_EQ(r.vsock->uds_path, "/run/vm/vsock.sock");
  ASSERT_EQ(r.fs.size(), 2u);
  EXPECT_EQ(r.fs[0].tag, "src");
  EXPECT_EQ(r.fs[0].socket_path, "/run/vfs-src.sock");
  EXPECT_EQ(r.fs[0].socket_fd, -1);
  EXPECT_EQ(r.fs[1].tag, "cache");
  EXPECT_EQ(r.fs[1].socket_path, "");
  EXPECT_EQ(r.fs[1].socket_fd, 9);
  EXPECT_EQ(r.memory_mib, 1536u);
  EXPECT_TRUE(r.hugepages);
  EXPECT_EQ(r.vcpus, 3u);
  EXPECT_EQ(r.kernel, "/k/vmlinux");
  EXPECT_EQ(r.cmdline, c.cmdline);
  EXPECT_EQ(r.initrd, "/k/initrd.cpio");
  ASSERT_EQ(r.disks.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(r.disks[i].path, c.disks[i].path);
    EXPECT_EQ(r.disks[i].mode, c.disks[i].mode);
    EXPECT_EQ(r.disks[i].id, c.disks[i].id);
  }
  ASSERT_TRUE(r.net);
  EXPECT_EQ(r.net->mac, c.net->mac);
  EXPECT_EQ(r.net->mtu, 9000);
  EXPECT_FALSE(r.net->user.outbound);
  EXPECT_TRUE(r.net->user.host_loopback);
  EXPECT_EQ(r.net->user.forwards, c.net->user.forwards);
  ASSERT_TRUE(r.net->tap);
  EXPECT_EQ(r.net->tap->fd, 5);
  EXPECT_EQ(r.net->tap->published, c.net->tap->published);
  EXPECT_EQ(r.console_out_fd, -1);
  EXPECT_EQ(r.console_err_fd, 12);
  EXPECT_EQ(r.console_in_fd, 0);
  EXPECT_EQ(r.ready_fd, 11);
  EXPECT_EQ(r.console_input, ConsoleInput::kAtWorkloadExec);
  EXPECT_EQ(r.timeout.count(), 90000);
  EXPECT_EQ(r.kvm_device, "/dev/kvm-other");
  EXPECT_EQ(r.seccomp, SeccompMode::kErrno);
}

TEST(MachineJson, OnlyTheKernelIsRequiredAndTheRestKeepsTheDefaults) {
  MachineConfig r = machine_config_from_json(R"({"kernel": "vmlinux"})");
  MachineConfig d;
  EXPECT_EQ(r.kernel, "vmlinux");
  EXPECT_EQ(r.memory_mib, d.memory_mib);
  EXPECT_EQ(r.vcpus, d.vcpus);
  EXPECT_EQ(r.console_out_fd, d.console_out_fd);
  EXPECT_EQ(r.console_err_fd, 2);
  EXPECT_EQ(r.console_in_fd, d.console_in_fd);
  EXPECT_EQ(r.ready_fd, -1);
  EXPECT_EQ(r.seccomp, d.seccomp);
  EXPECT_EQ(r.kvm_device, d.kvm_device);
  EXPECT_TRUE(r.disks.empty());
  EXPECT_FALSE(r.net);
  EXPECT_FALSE(r.vsock);
  MachineConfig v = machine_config_from_json(R"({"kernel": "k", "vsock": {"uds_path": "v"}})");
  ASSERT_TRUE(v.vsock);
  EXPECT_EQ(v.vsock->guest_cid, 3u);
  // No uds_path: a device without a host side (the shape of a snapshot's machine).
  MachineConfig bare = machine_config_from_json(R"({"kernel": "k", "vsock": {}})");
  ASSERT_TRUE(bare.vsock);
  EXPECT_TRUE(bare.vsock->uds_path.empty());
  // A NIC with nothing said is user-mode networking with its defaults.
  MachineConfig n = machine_config_from_json(R"({"kernel": "k", "net": {}})");
  ASSERT_TRUE(n.net);
  EXPECT_EQ(n.net->mtu, 1500);
  EXPECT_TRUE(n.net->user.outbound);
  EXPECT_FALSE(n.net->user.host_loopback);
}

TEST(MachineJson, MistakesNameTheMember) {
  struct Case {
    const char* json;
    const char* says;
  } cases[] = {
      {"[1]", "not a JSON object"},
      {"{", "not valid JSON"},
      {R"({"memory_mib": 64})", "kernel: missing"},
      {R"({"kernel": ""})", "kernel: empty"},
      {R"({"kernel": 5})", "kernel: not a string"},
      {R"({"kernel": "k", "memmory_mib": 64})", "memmory_mib: unknown member"},
      {R"({"kernel": "k", "memory_mib": -1})", "memory_mib: out of range"},
      {R"({"kernel": "k", "memory_mib": 1.5})", "memory_mib: not an integer"},
      {R"({"kernel": "k", "vcpus": 0})", "vcpus: out of range"},
      {R"({"kernel": "k", "hugepages": "yes"})", "hugepages: not true or false"},
      {R"({"kernel": "k", "seccomp": "maybe"})",
       "seccomp: \"maybe\" is not one of kill, errno, off"},
      {R"({"kernel": "k", "disks": {}})", "disks: not an array"},
      {R"({"kernel": "k", "disks": [{"mode": "read-only"}]})", "disks[0].path: missing or empty"},
      {R"({"kernel": "k", "disks": [{"path": "a"}, {"path": "b", "mode": "rw"}]})",
       "disks[1].mode: \"rw\" is not one of read-write, read-only, copy-on-write"},
      {R"({"kernel": "k", "disks": [{"path": "a", "size": 1}]})", "disks[0].size: unknown member"},
      {R"({"kernel": "k", "net": {"mtu": 67}})", "net.mtu: out of range"},
      {R"({"kernel": "k", "net": {"mac": "52:54:00:12:34"}})",
       "net.mac: \"52:54:00:12:34\" is not a MAC address"},
      {R"({"kernel": "k", "net": {"mac": "01:00:5e:00:00:01"}})",
       "net.mac: \"01:00:5e:00:00:01\" is a multicast address"},
      {R"({"kernel": "k", "net": {"tap": "tap0"}})", "net.tap: not a JSON object"},
      {R"({"kernel": "k", "net": {"tap": {}}})", "net.tap.fd: missing"},
      {R"({"kernel": "k", "net": {"tap": {"fd": -1}}})", "net.tap.fd: out of range"},
      {R"({"kernel": "k", "net": {"tap": {"fd": 3, "name": "tap0"}}})",
       "net.tap.name: unknown member"},
      {R"({"kernel": "k", "net": {"tap": {"fd": 3, "published": [{"host_port": 1}]}}})",
       "net.tap.published[0].guest_port: missing"},
      {R"({"kernel": "k", "net": {"user": {"forwards": [{"host_port": 80}]}}})",
       "net.user.forwards[0].guest_port: missing"},
      {R"({"kernel": "k", "net": {"user": {"forwards": [{"guest_port": 70000}]}}})",
       "net.user.forwards[0].guest_port: out of range"},
      {R"({"kernel": "k", "net": {"user": {"forwards": [{"guest_port": 53, "protocol": "sctp"}]}}})",
       "net.user.forwards[0].protocol: \"sctp\" is not one of tcp, udp"},
      {R"({"kernel": "k", "fs": {}})", "fs: not an array"},
      {R"({"kernel": "k", "fs": [{"socket_path": "s"}]})", "fs[0].tag: must be 1 to 36 bytes"},
      {R"({"kernel": "k", "fs": [{"tag": "0123456789012345678901234567890123456", "socket_fd": 3}]})",
       "fs[0].tag: must be 1 to 36 bytes"},
      {R"({"kernel": "k", "fs": [{"tag": "t"}]})",
       "fs[0]: needs exactly one of socket_path and socket_fd"},
      {R"({"kernel": "k", "fs": [{"tag": "t", "socket_path": "s", "socket_fd": 3}]})",
       "fs[0]: needs exactly one of socket_path and socket_fd"},
      {R"({"kernel": "k", "fs": [{"tag": "t", "socket_fd": -2}]})",
       "fs[0].socket_fd: out of range"},
      {R"({"kernel": "k", "fs": [{"tag": "t", "socket_fd": 3, "ro": true}]})",
       "fs[0].ro: unknown member"},
      {R"({"kernel": "k", "vsock": {"uds_path": "v", "guest_cid": 2}})",
       "vsock.guest_cid: out of range"},
      {R"({"kernel": "k", "vsock": {"uds_path": "v", "guest_cid": 4294967295}})",
       "vsock.guest_cid: out of range"},
      {R"({"kernel": "k", "vsock": {"uds_path": "v", "port": 1}})", "vsock.port: unknown member"},
  };
  for (const auto& c : cases) {
    std::string e = error_of(c.json);
    EXPECT_NE(e.find(c.says), std::string::npos) << c.json << " -> " << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }
}

TEST(MachineJson, ACallersOwnNetworkBackendHasNoJsonForm) {
  struct Dummy final : NetBackend {
    void attach(NetDeviceSide*) override {}
    void send(std::span<const uint8_t>) override {}
    void rx_ready() override {}
    bool rx_checksums_valid() const override { return true; }
    void run(std::span<const Watch>) override {}
  };
  MachineConfig c;
  c.kernel = "k";
  c.net.emplace();
  c.net->backend = std::make_shared<Dummy>();
  EXPECT_THROW(machine_config_to_json(c), Error);
}
