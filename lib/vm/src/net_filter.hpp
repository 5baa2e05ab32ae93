// The user-mode network's policy on what the guest may send (internal to net_slirp.cpp).
//
// libslirp has its own switches for this ("restricted", "disable_host_loopback"), but with them
// a published UDP port cannot answer: libslirp checks a guest datagram against them before it
// looks for the forward the datagram replies to (4.7: udp_input drops everything when
// restricted; a reply to a client on the host's loopback is refused as "host loopback"). So
// libslirp runs with both open and this filter, which sees every frame both ways, enforces them:
//
// - "host" destinations are those libslirp sends to the host itself (4.7: it connects to any
//   destination it is given, and maps the gateway and 255.255.255.255 to 127.0.0.1): 127.0.0.0/8,
//   0.0.0.0/8, 255.255.255.255 and every address of the virtual network 10.0.2.0/24 except the
//   DNS address's port 53 (the gateway is the host's loopback; libslirp sends the others to the
//   host's own network). Allowed with host_loopback. Multicast (224.0.0.0/4) reaches both the
//   host's own listeners (looped back) and its networks: it needs host_loopback and outbound.
//   "outside" is everything else, including the DNS address's port 53 (forwarded to the host's
//   resolver); allowed with outbound.
// - Only ARP and IPv4 frames pass: libslirp runs without IPv6, and nothing else has a use here.
// - Always allowed: ARP (answered inside libslirp), DHCP (UDP to port 67 of the gateway or
//   255.255.255.255, answered inside libslirp) and ICMP to exactly the gateway or the DNS
//   address (echo answered inside libslirp; ICMP to any other address makes libslirp ping it,
//   or send to its UDP port 7 where ping sockets are not allowed).
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

  // The guest network's addresses (host byte order).
  struct Addresses {
    uint32_t network = 0;  // the virtual network and its prefix length
    unsigned prefix_length = 24;
    uint32_t gateway = 0;  // libslirp's host address, which it maps to 127.0.0.1
    uint32_t dns = 0;      // forwarded to the host's resolver (port 53 only)
  };

  UserNetFilter(bool outbound, bool host_loopback, std::set<uint16_t> published_udp_guest_ports,
                const Addresses& net);

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
  uint32_t network_, mask_, gateway_, dns_;
  std::map<FlowKey, Clock::time_point> flows_;
};

}  // namespace img2vm::vm::detail
