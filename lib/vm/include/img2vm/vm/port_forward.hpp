// Published ports: docker's `-p` syntax and what it means for the runner.
//
//   [HOSTIP:][HOSTPORT:]GUESTPORT[/PROTO]
//
//   80                   guest port 80/tcp on a free host port (docker picks one too)
//   8080:80              host 0.0.0.0:8080 -> guest 80/tcp (docker's default: every interface)
//   127.0.0.1:8080:80    host 127.0.0.1:8080 only
//   127.0.0.1::80        host 127.0.0.1, a free port
//   [::1]:8080:80        an IPv6 host address (in brackets)
//   8000-8002:80-82/udp  ranges of equal length, expanded port by port
//
// PROTO is tcp (default) or udp; sctp is refused (not supported by the user-mode backend).
// Ports are 1-65535; a host port of 0 (or none) means "any free port".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace img2vm::vm {

// The transport protocol of a published port.
enum class PortProtocol { kTcp, kUdp };

// A published port: host address and port forwarded to a guest port.
struct PortForward {
  PortProtocol protocol = PortProtocol::kTcp;
  std::string host_ip = "0.0.0.0";  // numeric IPv4 or IPv6 (without brackets)
  uint16_t host_port = 0;           // 0: any free port
  uint16_t guest_port = 0;

  bool operator==(const PortForward&) const = default;
};

// Parses one `-p` value; throws Error(kInvalidArgument) naming the value and what is wrong.
std::vector<PortForward> parse_port_forward(std::string_view spec);

// "tcp" or "udp".
const char* to_string(PortProtocol p) noexcept;
// docker ps style: "127.0.0.1:8080->80/tcp", "[::1]:8080->80/udp".
std::string to_string(const PortForward& f);

}  // namespace img2vm::vm
