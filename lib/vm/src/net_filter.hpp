// The user-mode network's policy on what the guest may send (internal to net_slirp.cpp).
//
// libslirp has its own switches for this ("restricted", "disable_host_loopback"), but with them
// a published UDP port cannot answer: libslirp checks a guest datagram against them before it
// looks for the forward the datagram replies to (4.7: udp_input drops everything when
// restricted; a reply to a client on the host's loopback is refused as "host loopback"). So
// libslirp runs with both open and this filter, which sees every frame both ways, enforces them:
//
// - "host" destinations are the gateway 10.0.2.2 and 255.255.255.255 (libslirp sends both to
//   the host's 127.0.0.1); allowed with host_loopback. "outside" is everything else, including
//   the DNS address 10.0.2.3 (forwarded to the host's resolver); allowed with outbound.
// - Always allowed: ARP and non-IPv4 frames (libslirp answers them itself or drops them), DHCP
//   (UDP to port 67 of the gateway or broadcast, answered inside libslirp) and ICMP to the
//   gateway or the DNS address (echo answered inside libslirp).
// - To a destination not allowed:
//   - a TCP SYN (what makes libslirp open a host connection) is refused with a TCP RST to the
//     guest (the guest sees "connection refused"); other TCP segments pass (libslirp resets
//     them unless they belong to a published port's connection, where the guest is the server);
//   - a UDP datagram passes only when it answers a datagram a published UDP port delivered:
//     from that guest port back to the address and port it came from, within 3 minutes;
//   - IP fragments, ICMP and other protocols are dropped.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <span>
#include <tuple>
#include <vector>

namespace img2vm::vm::detail {

class UserNetFilter {
 public:
  enum class Verdict { kPass, kDrop, kRefuse };

  UserNetFilter(bool outbound, bool host_loopback, std::set<uint16_t> published_udp_guest_ports, uint32_t gateway,
                uint32_t dns);

  // A frame from the guest. kRefuse: `reply` holds the TCP RST frame to hand to the guest.
  Verdict check_from_guest(std::span<const uint8_t> frame, std::vector<uint8_t>& reply);
  // A frame libslirp sends to the guest: learns the UDP flows of published ports.
  void note_to_guest(std::span<const uint8_t> frame);

  static constexpr size_t kMaxFlows = 4096;
  static constexpr std::chrono::seconds kFlowIdle{180};

 private:
  using Clock = std::chrono::steady_clock;
  using FlowKey = std::tuple<uint16_t, uint32_t, uint16_t>;  // guest port, peer address, peer port

  bool open_all_ = false;
  bool outbound_, host_loopback_;
  std::set<uint16_t> udp_ports_;
  uint32_t gateway_, dns_;
  std::map<FlowKey, Clock::time_point> flows_;
};

}  // namespace img2vm::vm::detail
