// The pure parsing the facade does for docker-style options: ExposedPorts and --expose specs,
// the name servers a tap-networked guest gets from the host's resolv.conf, and the checks of the
// netns network's options.
#include <gtest/gtest.h>

#include "img2vm/base/error.hpp"
#include "img2vm/runtime/machine.hpp"

namespace img2vm::runtime {
namespace {

TEST(MachineOptions, ExposedPorts) {
  EXPECT_EQ(parse_exposed_ports({"80/tcp", "53/udp", "8080", "80", "8000-8002/TCP"}, "x"),
            (std::vector<std::string>{"80/tcp", "53/udp", "8080/tcp", "8000/tcp", "8001/tcp",
                                      "8002/tcp"}));
  EXPECT_TRUE(parse_exposed_ports({}, "x").empty());
  for (const char* bad : {"0", "65536", "80/icmp", "abc", "90-80", "/tcp", "-80"}) {
    try {
      parse_exposed_ports({bad}, "--expose");
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("--expose ") + bad), std::string::npos)
          << e.what();
    }
  }
}

TEST(MachineOptions, TapGuestDnsSkipsWhatTheGuestCannotReach) {
  EXPECT_EQ(
      tap_guest_dns("# comment\nnameserver 192.0.2.53\nnameserver 127.0.0.53\nnameserver ::1\n"
                    "nameserver 2001:db8::1\nsearch example.org\nnameserver "
                    "198.51.100.1\nnameserver 192.0.2.53\n"),
      (std::vector<std::string>{"192.0.2.53", "198.51.100.1"}));
  EXPECT_EQ(tap_guest_dns("nameserver 127.0.0.53\noptions edns0\n"),
            (std::vector<std::string>{"8.8.8.8", "8.8.4.4"}));
  EXPECT_EQ(tap_guest_dns(""), (std::vector<std::string>{"8.8.8.8", "8.8.4.4"}));
}

// The netns network takes a namespace's path, the path is for it alone, and ports are the
// engine's to publish; all refused before anything is set up.
TEST(MachineOptions, NetnsNetworkOptionsAreChecked) {
  auto error_of = [](NetworkMode mode, const std::string& netns, bool publish) {
    MachineOptions mo;
    mo.kernel = "/nonexistent/vmlinux";
    mo.rootfs = "/nonexistent/rootfs.ext4";
    mo.network = mode;
    mo.netns = netns;
    if (publish) mo.publish.push_back(vm::PortForward{});
    try {
      build_machine(std::move(mo));
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(error_of(NetworkMode::kNetns, "", false),
            "machine: the netns network needs the network namespace's path");
  EXPECT_EQ(error_of(NetworkMode::kUser, "/run/netns/x", false),
            "machine: a network namespace path is for the netns network only");
  EXPECT_EQ(error_of(NetworkMode::kNetns, "/run/netns/x", true),
            "machine: published ports are the container engine's in a network namespace it made");
}

}  // namespace
}  // namespace img2vm::runtime
