#include "net_filter.hpp"

#include <algorithm>
#include <cstring>

namespace img2vm::vm::detail {

namespace {

constexpr size_t kEth = 14;
constexpr uint16_t kTypeIpv4 = 0x0800, kTypeArp = 0x0806;
constexpr uint8_t kIcmp = 1, kTcp = 6, kUdp = 17;
constexpr uint8_t kFin = 0x01, kSyn = 0x02, kRst = 0x04, kAck = 0x10, kUrg = 0x20;
constexpr uint32_t kBroadcast = 0xffffffff;
constexpr uint16_t kDnsPort = 53, kDhcpPort = 67;

uint16_t be16(const uint8_t* p) { return uint16_t(p[0] << 8 | p[1]); }
uint32_t be32(const uint8_t* p) { return uint32_t(be16(p)) << 16 | be16(p + 2); }
void put16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v >> 8);
  p[1] = uint8_t(v);
}
void put32(uint8_t* p, uint32_t v) {
  put16(p, uint16_t(v >> 16));
  put16(p + 2, uint16_t(v));
}
uint32_t sum16(const uint8_t* p, size_t n, uint32_t s = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) s += be16(p + i);
  if (n & 1) s += uint32_t(p[n - 1]) << 8;
  return s;
}
uint16_t fold(uint32_t s) {
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return uint16_t(~s);
}

// The IPv4 packet in an Ethernet frame, its fields read once and checked against the frame.
struct Ipv4 {
  uint32_t src = 0, dst = 0;
  uint8_t proto = 0;
  bool fragment = false;
  const uint8_t* l4 = nullptr;  // transport header
  size_t l4_len = 0;            // bytes of it inside both the frame and the IP total length
};

// False when the frame is not IPv4; `ok` false when it claims to be but does not parse.
bool parse_ipv4(std::span<const uint8_t> f, Ipv4& ip, bool& ok) {
  ok = false;
  if (f.size() < kEth || be16(f.data() + 12) != kTypeIpv4) return false;
  const uint8_t* h = f.data() + kEth;
  size_t avail = f.size() - kEth;
  if (avail < 20 || (h[0] >> 4) != 4) return true;
  size_t ihl = size_t(h[0] & 0xf) * 4, total = be16(h + 2);
  if (ihl < 20 || ihl > avail || total < ihl) return true;
  ip.proto = h[9];
  ip.src = be32(h + 12);
  ip.dst = be32(h + 16);
  uint16_t frag = be16(h + 6);
  ip.fragment = (frag & 0x2000) || (frag & 0x1fff);
  ip.l4 = h + ihl;
  ip.l4_len = std::min(avail, total) - ihl;
  ok = true;
  return true;
}

// A TCP RST|ACK answering `syn` (an Ethernet frame holding a checked IPv4 TCP SYN).
std::vector<uint8_t> tcp_reset_for(std::span<const uint8_t> syn, const Ipv4& ip) {
  const uint8_t* t = ip.l4;
  size_t data_off = size_t(t[12] >> 4) * 4;
  uint32_t payload = ip.l4_len > data_off ? uint32_t(ip.l4_len - data_off) : 0;
  std::vector<uint8_t> r(kEth + 20 + 20, 0);
  std::memcpy(r.data(), syn.data() + 6, 6);  // to the guest's MAC
  std::memcpy(r.data() + 6, syn.data(), 6);  // from the MAC it addressed
  put16(r.data() + 12, kTypeIpv4);
  uint8_t* h = r.data() + kEth;
  h[0] = 0x45;
  put16(h + 2, 40);
  put16(h + 6, 0x4000);  // don't fragment
  h[8] = 64;
  h[9] = kTcp;
  put32(h + 12, ip.dst);
  put32(h + 16, ip.src);
  put16(h + 10, fold(sum16(h, 20)));
  uint8_t* tcp = h + 20;
  std::memcpy(tcp, t + 2, 2);                 // source port: the one the guest called
  std::memcpy(tcp + 2, t, 2);                 // destination port: the guest's
  put32(tcp + 8, be32(t + 4) + 1 + payload);  // acknowledges the SYN (and any data on it)
  tcp[12] = 5 << 4;
  tcp[13] = kRst | kAck;
  uint8_t pseudo[12];
  put32(pseudo, ip.dst);
  put32(pseudo + 4, ip.src);
  put16(pseudo + 8, kTcp);
  put16(pseudo + 10, 20);
  put16(tcp + 16, fold(sum16(tcp, 20, sum16(pseudo, 12))));
  return r;
}

uint32_t prefix_mask(unsigned prefix) {
  return prefix == 0 ? 0 : ~uint32_t(0) << (32 - std::min(prefix, 32u));
}

// What a destination reaches through libslirp, so which switch it needs.
enum class Reach { kHost, kOutside, kHostAndOutside };

Reach reach_of(const Ipv4& ip, uint32_t network, uint32_t mask, uint32_t dns) {
  const uint32_t d = ip.dst;
  if ((d & mask) == network) {
    // libslirp sends the DNS address's port 53 to the host's resolver (and refuses its other
    // ports); the gateway is the host's loopback, the rest goes to the host's own network.
    const bool dns_query = d == dns && !ip.fragment && (ip.proto == kUdp || ip.proto == kTcp) &&
                           ip.l4_len >= (ip.proto == kTcp ? 20u : 8u) &&
                           be16(ip.l4 + 2) == kDnsPort;
    return dns_query ? Reach::kOutside : Reach::kHost;
  }
  const uint32_t top = d >> 24;
  if (top == 127 || top == 0 || d == kBroadcast) return Reach::kHost;  // the host itself
  if ((d >> 28) == 0xe) return Reach::kHostAndOutside;                 // multicast, looped back too
  return Reach::kOutside;
}

}  // namespace

UserNetFilter::UserNetFilter(bool outbound, bool host_loopback,
                             std::set<uint16_t> published_udp_guest_ports, const Addresses& net)
    : open_all_(outbound && host_loopback),
      outbound_(outbound),
      host_loopback_(host_loopback),
      udp_ports_(std::move(published_udp_guest_ports)),
      network_(net.network & prefix_mask(net.prefix_length)),
      mask_(prefix_mask(net.prefix_length)),
      gateway_(net.gateway),
      dns_(net.dns) {}

UserNetFilter::Verdict UserNetFilter::check_from_guest(std::span<const uint8_t> frame,
                                                       std::vector<uint8_t>& reply) {
  // ARP and IPv4 only: libslirp runs without IPv6 (and would answer NC-SI, of no use here).
  if (frame.size() < kEth) return Verdict::kDrop;
  const uint16_t type = be16(frame.data() + 12);
  if (type == kTypeArp) return Verdict::kPass;
  if (type != kTypeIpv4) return Verdict::kDrop;
  if (open_all_) return Verdict::kPass;
  Ipv4 ip;
  bool ok;
  parse_ipv4(frame, ip, ok);
  if (!ok) return Verdict::kDrop;
  switch (reach_of(ip, network_, mask_, dns_)) {
    case Reach::kHost:
      if (host_loopback_) return Verdict::kPass;
      break;
    case Reach::kOutside:
      if (outbound_) return Verdict::kPass;
      break;
    case Reach::kHostAndOutside:
      break;  // both switches on is open_all_
  }
  // libslirp answers these itself, without a host socket.
  if (ip.proto == kIcmp && (ip.dst == gateway_ || ip.dst == dns_)) return Verdict::kPass;
  if (ip.fragment) return Verdict::kDrop;  // ports and flags may not be in this fragment
  if (ip.proto == kUdp) {
    if (ip.l4_len < 8) return Verdict::kDrop;
    uint16_t sport = be16(ip.l4), dport = be16(ip.l4 + 2);
    if (dport == kDhcpPort && (ip.dst == gateway_ || ip.dst == kBroadcast)) return Verdict::kPass;
    auto it = flows_.find({sport, ip.dst, dport});
    if (it != flows_.end() && Clock::now() - it->second < kFlowIdle) return Verdict::kPass;
    return Verdict::kDrop;
  }
  if (ip.proto == kTcp) {
    if (ip.l4_len < 20) return Verdict::kDrop;
    uint8_t flags = ip.l4[13];
    if ((flags & (kFin | kSyn | kRst | kAck | kUrg)) == kSyn) {
      reply = tcp_reset_for(frame, ip);
      return Verdict::kRefuse;
    }
    return Verdict::kPass;
  }
  return Verdict::kDrop;
}

void UserNetFilter::note_to_guest(std::span<const uint8_t> frame) {
  if (open_all_ || udp_ports_.empty()) return;
  Ipv4 ip;
  bool ok;
  if (!parse_ipv4(frame, ip, ok) || !ok || ip.proto != kUdp || ip.l4_len < 8) return;
  if (ip.fragment && (be16(frame.data() + kEth + 6) & 0x1fff)) return;  // not the first fragment
  uint16_t sport = be16(ip.l4), dport = be16(ip.l4 + 2);
  if (!udp_ports_.count(dport)) return;
  auto now = Clock::now();
  if (flows_.size() >= kMaxFlows && !flows_.count({dport, ip.src, sport})) {
    // Forget the idlest flow.
    auto oldest = std::min_element(flows_.begin(), flows_.end(), [](const auto& a, const auto& b) {
      return a.second < b.second;
    });
    flows_.erase(oldest);
  }
  flows_[{dport, ip.src, sport}] = now;
}

}  // namespace img2vm::vm::detail
