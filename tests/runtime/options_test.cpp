// The pure parsing the facade does for docker-style options: ExposedPorts and --expose specs,
// and the name servers a tap-networked guest gets from the host's resolv.conf.
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

}  // namespace
}  // namespace img2vm::runtime
