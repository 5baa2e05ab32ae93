// docker's `-p` syntax: every accepted form, and a clear error for each malformed one.
#include "img2vm/vm/port_forward.hpp"

#include <gtest/gtest.h>

#include "img2vm/base/error.hpp"

using namespace img2vm;
using namespace img2vm::vm;

namespace {
PortForward fwd(PortProtocol p, std::string ip, uint16_t host, uint16_t guest) {
  PortForward f;
  f.protocol = p;
  f.host_ip = std::move(ip);
  f.host_port = host;
  f.guest_port = guest;
  return f;
}
constexpr auto kTcp = PortProtocol::kTcp;
constexpr auto kUdp = PortProtocol::kUdp;

std::string error_of(std::string_view spec) {
  try {
    parse_port_forward(spec);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    return e.what();
  }
  return "(no error)";
}
}  // namespace

TEST(PortForward, DockerForms) {
  using V = std::vector<PortForward>;
  EXPECT_EQ(parse_port_forward("8080:80"), V{fwd(kTcp, "0.0.0.0", 8080, 80)});
  EXPECT_EQ(parse_port_forward("80"), V{fwd(kTcp, "0.0.0.0", 0, 80)});
  EXPECT_EQ(parse_port_forward("127.0.0.1:8080:80"), V{fwd(kTcp, "127.0.0.1", 8080, 80)});
  EXPECT_EQ(parse_port_forward("127.0.0.1::80"), V{fwd(kTcp, "127.0.0.1", 0, 80)});
  EXPECT_EQ(parse_port_forward("::80"), V{fwd(kTcp, "0.0.0.0", 0, 80)});
  EXPECT_EQ(parse_port_forward("5353:53/udp"), V{fwd(kUdp, "0.0.0.0", 5353, 53)});
  EXPECT_EQ(parse_port_forward("5353:53/UDP"), V{fwd(kUdp, "0.0.0.0", 5353, 53)});
  EXPECT_EQ(parse_port_forward("8080:80/tcp"), V{fwd(kTcp, "0.0.0.0", 8080, 80)});
  EXPECT_EQ(parse_port_forward("[::1]:8080:80"), V{fwd(kTcp, "::1", 8080, 80)});
  EXPECT_EQ(parse_port_forward("[fe80::1]::443/udp"), V{fwd(kUdp, "fe80::1", 0, 443)});
  EXPECT_EQ(parse_port_forward("0:80"), V{fwd(kTcp, "0.0.0.0", 0, 80)});
  EXPECT_EQ(parse_port_forward("65535:1"), V{fwd(kTcp, "0.0.0.0", 65535, 1)});
  EXPECT_EQ(parse_port_forward("8000-8002:80-82/udp"),
            (V{fwd(kUdp, "0.0.0.0", 8000, 80), fwd(kUdp, "0.0.0.0", 8001, 81),
               fwd(kUdp, "0.0.0.0", 8002, 82)}));
  EXPECT_EQ(parse_port_forward("10.1.2.3::7000-7001"),
            (V{fwd(kTcp, "10.1.2.3", 0, 7000), fwd(kTcp, "10.1.2.3", 0, 7001)}));
}

TEST(PortForward, ToStringLikeDockerPs) {
  EXPECT_EQ(to_string(fwd(kTcp, "127.0.0.1", 8080, 80)), "127.0.0.1:8080->80/tcp");
  EXPECT_EQ(to_string(fwd(kUdp, "::1", 5353, 53)), "[::1]:5353->53/udp");
}

TEST(PortForward, MalformedSpecsAreRefusedWithTheReason) {
  struct Case {
    const char* spec;
    const char* why;
  } cases[] = {
      {"", "empty"},
      {"8080:", "no guest port"},
      {":80", "empty host port"},
      {"80:0", "guest port \"0\""},
      {"0", "guest port \"0\""},
      {"8080:65536", "guest port \"65536\""},
      {"70000:80", "host port \"70000\""},
      {"http:80", "host port \"http\""},
      {"8080:-80", "guest port \"\""},
      {"8080:80/sctp", "sctp is not supported"},
      {"8080:80/icmp", "unknown protocol \"icmp\""},
      {"8080:80/", "unknown protocol \"\""},
      {"1.2.3:8080:80", "\"1.2.3\" is not a numeric IPv4 address"},
      {"localhost:8080:80", "\"localhost\" is not a numeric IPv4 address"},
      {"::1:8080:80", "too many ':'"},
      {"[::1:8080:80", "unclosed '['"},
      {"[::1]8080:80", "expected ':' after"},
      {"[::1]:80", "expected HOSTPORT:GUESTPORT"},
      {"[1.2.3.4]:80:80", "is not a numeric IPv6 address"},
      {"8000-8001:80", "ranges differ in length"},
      {"80:90-80", "runs backwards"},
      {"8080 :80", "space"},
      {"+80:80", "host port \"+80\""},
  };
  for (const auto& c : cases) {
    std::string msg = error_of(c.spec);
    EXPECT_NE(msg.find(c.why), std::string::npos) << c.spec << " -> " << msg;
    EXPECT_NE(msg.find(std::string("\"") + c.spec + "\""), std::string::npos)
        << "names the spec: " << msg;
  }
}
