// libFuzzer target for the user-mode network's policy filter (lib/vm/src/net_filter.hpp): it
// parses every Ethernet frame the guest sends. The input is split into frames; each is noted as
// a frame to the guest (which teaches the filter UDP flows) and checked under every
// outbound/host-loopback setting. Besides crashes, out-of-bounds reads (ASan) and UB (UBSan),
// the policy itself is checked against what libslirp 4.7 would make of a frame it is given
// (re-derived here from libslirp's sources, not from the filter's code):
// - nothing but ARP and IPv4 passes;
// - a frame that libslirp would turn into a host connection, datagram or ping to a destination
//   the setting forbids never passes: to the host's loopback (127.0.0.0/8, 0.0.0.0/8,
//   255.255.255.255, the virtual network but the DNS port) without host_loopback, elsewhere
//   without outbound, multicast without both. What may pass there is what libslirp answers
//   itself (ICMP to the gateway or the DNS address, DHCP), TCP segments that open nothing, and
//   UDP from a published port (an answer to its client);
// - a refusal is a well-formed TCP RST|ACK for a pure SYN, addressed back to the sender.
#include <cstddef>
#include <cstdint>
#include <set>
#include <vector>

#include "net_filter.hpp"

using img2vm::vm::detail::UserNetFilter;

namespace {

constexpr uint32_t kNetwork = 0x0a000200, kGateway = 0x0a000202, kDns = 0x0a000203;

uint16_t be16(const uint8_t* p) { return uint16_t(p[0] << 8 | p[1]); }
uint32_t be32(const uint8_t* p) { return uint32_t(be16(p)) << 16 | be16(p + 2); }

void check(bool ok) {
  if (!ok) __builtin_trap();
}

uint16_t checksum(const uint8_t* p, size_t n, uint32_t s = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) s += be16(p + i);
  if (n & 1) s += uint32_t(p[n - 1]) << 8;
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return uint16_t(~s);
}

// An IPv4 packet as libslirp's ip_input takes it (checksum aside); nullopt-like `valid` false
// when libslirp would drop it before looking at its destination.
struct Packet {
  bool valid = false;
  uint32_t src = 0, dst = 0;
  uint8_t proto = 0;
  bool fragment = false;
  const uint8_t* l4 = nullptr;
  size_t l4_len = 0;
};

// `truncated_ok`: take a packet longer than the frame as far as it goes (to look at a refusal,
// which may answer a packet libslirp would drop).
Packet packet_of(const uint8_t* f, size_t n, bool truncated_ok = false) {
  Packet p;
  if (n < 14 + 20) return p;
  const uint8_t* h = f + 14;
  const size_t len = n - 14, hlen = size_t(h[0] & 0xf) * 4;
  size_t total = be16(h + 2);
  if (truncated_ok && total > len) total = len;
  if ((h[0] >> 4) != 4 || hlen < 20 || hlen > len || total < hlen || total > len) return p;
  p.valid = true;
  p.proto = h[9];
  p.src = be32(h + 12);
  p.dst = be32(h + 16);
  p.fragment = (be16(h + 6) & 0x3fff) != 0;
  p.l4 = h + hlen;
  p.l4_len = total - hlen;
  return p;
}

// Ports (and for TCP the flags) of a whole, unfragmented TCP or UDP header.
struct Ports {
  bool present = false;
  uint16_t sport = 0, dport = 0;
  bool pure_syn =
      false;  // what makes libslirp open a connection (tcp_input: no other of FIN RST ACK URG)
};

Ports ports_of(const Packet& p) {
  Ports o;
  if (!p.valid || p.fragment || (p.proto != 6 && p.proto != 17) ||
      p.l4_len < (p.proto == 6 ? 20u : 8u))
    return o;
  o.present = true;
  o.sport = be16(p.l4);
  o.dport = be16(p.l4 + 2);
  o.pure_syn = p.proto == 6 && (p.l4[13] & 0x37) == 0x02;
  return o;
}

// Whether the setting lets the guest reach this destination through libslirp.
bool allowed(const Packet& p, const Ports& t, bool outbound, bool host_loopback) {
  const uint32_t d = p.dst;
  const bool dns_query = d == kDns && t.present && t.dport == 53;
  const bool host = ((d & 0xffffff00) == kNetwork && !dns_query) || (d >> 24) == 127 ||
                    (d >> 24) == 0 || d == 0xffffffff;
  const bool multicast = (d >> 28) == 0xe;
  return multicast ? outbound && host_loopback : host ? host_loopback : outbound;
}

// Checks one verdict of a filter built with these settings.
void check_verdict(const uint8_t* f, size_t n, UserNetFilter::Verdict v,
                   const std::vector<uint8_t>& reply, bool outbound, bool host_loopback,
                   const std::set<uint16_t>& published) {
  using V = UserNetFilter::Verdict;
  if (v == V::kDrop) return;
  check(n >= 14);
  const uint16_t type = be16(f + 12);
  if (v == V::kPass) check(type == 0x0806 || type == 0x0800);
  if (type != 0x0800) {
    check(v == V::kPass);
    return;
  }
  if (v == V::kRefuse) {
    // Only a pure SYN is refused, with its reset addressed back to the guest.
    const Packet p = packet_of(f, n, true);
    const Ports t = ports_of(p);
    check(t.pure_syn && !allowed(p, t, outbound, host_loopback) && reply.size() == 54);
    const uint8_t* r = reply.data();
    for (int i = 0; i < 6; ++i) check(r[i] == f[6 + i] && r[6 + i] == f[i]);
    check(be16(r + 12) == 0x0800 && checksum(r + 14, 20) == 0);
    check(be32(r + 26) == p.dst && be32(r + 30) == p.src && r[23] == 6);
    check(be16(r + 34) == t.dport && be16(r + 36) == t.sport && r[47] == 0x14);
    const uint8_t pseudo[12] = {r[26], r[27], r[28], r[29], r[30], r[31],
                                r[32], r[33], 0,     6,     0,     20};
    uint32_t s = 0;
    for (int i = 0; i < 12; i += 2) s += be16(pseudo + i);
    check(checksum(r + 34, 20, s) == 0);
    return;
  }
  const Packet p = packet_of(f, n);
  if (!p.valid) return;  // libslirp drops what it cannot parse
  const Ports t = ports_of(p);
  if (allowed(p, t, outbound, host_loopback)) return;
  const uint32_t d = p.dst;
  // Passing anyway: only what opens nothing on the host.
  const bool slirp_answers =
      (p.proto == 1 && (d == kGateway || d == kDns)) ||
      (p.proto == 17 && t.present && t.dport == 67 && (d == kGateway || d == 0xffffffff));
  const bool opens_nothing = p.proto == 6 && t.present && !t.pure_syn;
  const bool answers_a_client = p.proto == 17 && t.present && published.count(t.sport);
  check(slirp_answers || opens_nothing || answers_a_client);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  struct Setting {
    bool outbound, host_loopback;
    std::set<uint16_t> published;
  };
  static const Setting settings[] = {{false, false, {53, 5353}}, {true, false, {53}},
                                     {false, true, {}},          {true, false, {}},
                                     {true, true, {}},           {false, false, {}}};
  UserNetFilter::Addresses net;
  net.network = kNetwork;
  net.prefix_length = 24;
  net.gateway = kGateway;
  net.dns = kDns;
  std::vector<UserNetFilter> filters;
  for (const auto& s : settings)
    filters.emplace_back(s.outbound, s.host_loopback, s.published, net);
  std::vector<uint8_t> reply;
  // Frames: a length byte, then that many bytes (so several frames share flow state).
  for (size_t off = 0; off < size;) {
    size_t len = data[off++] * 2;
    if (len > size - off) len = size - off;
    std::span<const uint8_t> frame(data + off, len);
    for (size_t i = 0; i < filters.size(); ++i) {
      filters[i].note_to_guest(frame);
      reply.clear();
      auto v = filters[i].check_from_guest(frame, reply);
      check_verdict(frame.data(), frame.size(), v, reply, settings[i].outbound,
                    settings[i].host_loopback, settings[i].published);
    }
    off += len;
  }
  return 0;
}
