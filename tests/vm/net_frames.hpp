// Raw Ethernet frames for the network backend tests (net_slirp_test, net_tap_test): the tests
// play the guest, building ARP, IPv4, ICMP, UDP and TCP frames with correct checksums and
// taking apart what the backend hands to the device side.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "img2vm/base/fd.hpp"
#include "img2vm/vm/seccomp.hpp"
#include "virtio_net.hpp"

namespace img2vm::testing::frames {

using namespace std::chrono_literals;

using Bytes = std::vector<uint8_t>;
using Mac = std::array<uint8_t, 6>;

constexpr Mac kGuestMac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
constexpr Mac kBroadcast = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
constexpr uint16_t kArp = 0x0806, kIpv4 = 0x0800;
constexpr uint8_t kIcmp = 1, kTcp = 6, kUdp = 17;
constexpr uint8_t kFin = 1, kSyn = 2, kRst = 4, kPsh = 8, kAck = 16;

inline uint32_t ip(std::string_view s) {
  in_addr a{};
  if (::inet_pton(AF_INET, std::string(s).c_str(), &a) != 1) std::abort();
  return ntohl(a.s_addr);
}

inline void put16(Bytes& b, uint16_t v) {
  b.push_back(uint8_t(v >> 8));
  b.push_back(uint8_t(v));
}
inline void put32(Bytes& b, uint32_t v) {
  put16(b, uint16_t(v >> 16));
  put16(b, uint16_t(v));
}
inline uint16_t get16(const Bytes& b, size_t o) { return uint16_t(b.at(o) << 8 | b.at(o + 1)); }
inline uint32_t get32(const Bytes& b, size_t o) {
  return uint32_t(get16(b, o)) << 16 | get16(b, o + 2);
}

inline uint32_t sum_words(const uint8_t* p, size_t n, uint32_t sum = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) sum += uint32_t(p[i] << 8 | p[i + 1]);
  if (n & 1) sum += uint32_t(p[n - 1] << 8);
  return sum;
}
inline uint16_t fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return uint16_t(~sum);
}

inline Bytes ether(const Mac& dst, const Mac& src, uint16_t type, const Bytes& payload) {
  Bytes f(dst.begin(), dst.end());
  f.insert(f.end(), src.begin(), src.end());
  put16(f, type);
  f.insert(f.end(), payload.begin(), payload.end());
  return f;
}

// An ARP packet from the guest (`sender_mac`): a request (op 1) broadcast for `target_ip`, or a
// reply (op 2) to `target_mac`.
inline Bytes arp(uint16_t op, uint32_t sender_ip, const Mac& target_mac, uint32_t target_ip,
                 const Mac& sender_mac = kGuestMac) {
  Bytes a;
  put16(a, 1);  // Ethernet
  put16(a, kIpv4);
  a.push_back(6);
  a.push_back(4);
  put16(a, op);
  a.insert(a.end(), sender_mac.begin(), sender_mac.end());
  put32(a, sender_ip);
  if (op == 1)
    a.insert(a.end(), 6, 0);
  else
    a.insert(a.end(), target_mac.begin(), target_mac.end());
  put32(a, target_ip);
  return ether(op == 1 ? kBroadcast : target_mac, sender_mac, kArp, a);
}
inline Bytes arp_request(uint32_t sender_ip, uint32_t target_ip) {
  return arp(1, sender_ip, kBroadcast, target_ip);
}
inline Bytes arp_reply(uint32_t sender_ip, const Mac& target_mac, uint32_t target_ip,
                       const Mac& sender_mac = kGuestMac) {
  return arp(2, sender_ip, target_mac, target_ip, sender_mac);
}

inline Bytes ipv4(uint8_t proto, uint32_t src, uint32_t dst, const Bytes& payload) {
  Bytes h;
  h.push_back(0x45);
  h.push_back(0);
  put16(h, uint16_t(20 + payload.size()));
  put16(h, 0x1234);  // id
  put16(h, 0x4000);  // don't fragment
  h.push_back(64);
  h.push_back(proto);
  put16(h, 0);
  put32(h, src);
  put32(h, dst);
  uint16_t c = fold(sum_words(h.data(), h.size()));
  h[10] = uint8_t(c >> 8);
  h[11] = uint8_t(c);
  h.insert(h.end(), payload.begin(), payload.end());
  return h;
}

// The TCP/UDP checksum over the pseudo header.
inline void l4_checksum(Bytes& seg, uint8_t proto, uint32_t src, uint32_t dst, size_t csum_off) {
  Bytes pseudo;
  put32(pseudo, src);
  put32(pseudo, dst);
  put16(pseudo, proto);
  put16(pseudo, uint16_t(seg.size()));
  uint16_t c = fold(sum_words(seg.data(), seg.size(), sum_words(pseudo.data(), pseudo.size())));
  if (proto == kUdp && c == 0) c = 0xffff;
  seg[csum_off] = uint8_t(c >> 8);
  seg[csum_off + 1] = uint8_t(c);
}

// A UDP header (checksum 0) and its payload.
inline Bytes udp_datagram(uint16_t sport, uint16_t dport, const Bytes& payload) {
  Bytes u;
  put16(u, sport);
  put16(u, dport);
  put16(u, uint16_t(8 + payload.size()));
  put16(u, 0);
  u.insert(u.end(), payload.begin(), payload.end());
  return u;
}

inline Bytes udp(uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport, const Bytes& payload) {
  Bytes u = udp_datagram(sport, dport, payload);
  l4_checksum(u, kUdp, src, dst, 6);
  return ipv4(kUdp, src, dst, u);
}

inline Bytes tcp(uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport, uint32_t seq,
                 uint32_t ack, uint8_t flags, const Bytes& payload = {}) {
  Bytes t;
  put16(t, sport);
  put16(t, dport);
  put32(t, seq);
  put32(t, ack);
  t.push_back(5 << 4);
  t.push_back(flags);
  put16(t, 65535);  // window
  put16(t, 0);
  put16(t, 0);
  t.insert(t.end(), payload.begin(), payload.end());
  l4_checksum(t, kTcp, src, dst, 16);
  return ipv4(kTcp, src, dst, t);
}

// IPv6 (only ever sent by the tests' guest, to show that it goes nowhere).
constexpr uint16_t kIpv6 = 0x86dd;
constexpr uint8_t kIcmp6 = 58;
using Ip6 = std::array<uint8_t, 16>;

inline Ip6 ip6(std::string_view s) {
  Ip6 a{};
  if (::inet_pton(AF_INET6, std::string(s).c_str(), a.data()) != 1) std::abort();
  return a;
}
// The link-local address the kernel derives from a MAC (modified EUI-64).
inline Ip6 link_local(const Mac& m) {
  Ip6 a{0xfe, 0x80};
  a[8] = uint8_t(m[0] ^ 0x02);
  a[9] = m[1];
  a[10] = m[2];
  a[11] = 0xff;
  a[12] = 0xfe;
  a[13] = m[3];
  a[14] = m[4];
  a[15] = m[5];
  return a;
}

// An IPv6 packet whose upper-layer checksum (at `csum_off` of `payload`) is filled in.
inline Bytes ipv6(uint8_t next, const Ip6& src, const Ip6& dst, Bytes payload, size_t csum_off,
                  uint8_t hops = 64) {
  Bytes pseudo(src.begin(), src.end());
  pseudo.insert(pseudo.end(), dst.begin(), dst.end());
  put32(pseudo, uint32_t(payload.size()));
  put32(pseudo, next);
  uint16_t c =
      fold(sum_words(payload.data(), payload.size(), sum_words(pseudo.data(), pseudo.size())));
  if (next == kUdp && c == 0) c = 0xffff;
  payload[csum_off] = uint8_t(c >> 8);
  payload[csum_off + 1] = uint8_t(c);
  Bytes h = {0x60, 0, 0, 0};
  put16(h, uint16_t(payload.size()));
  h.push_back(next);
  h.push_back(hops);
  h.insert(h.end(), src.begin(), src.end());
  h.insert(h.end(), dst.begin(), dst.end());
  h.insert(h.end(), payload.begin(), payload.end());
  return h;
}

inline Bytes udp6(const Ip6& src, uint16_t sport, const Ip6& dst, uint16_t dport,
                  const Bytes& payload) {
  return ipv6(kUdp, src, dst, udp_datagram(sport, dport, payload), 6);
}

// A router advertisement from `src` (link-local) to all nodes: a default router for 30 minutes
// and an on-link prefix for address autoconfiguration.
inline Bytes router_advertisement(const Ip6& src, const Mac& src_mac, const Ip6& prefix) {
  Bytes ra = {134, 0, 0, 0, 64, 0};
  put16(ra, 1800);              // router lifetime
  put32(ra, 0);                 // reachable time
  put32(ra, 0);                 // retransmission timer
  ra.insert(ra.end(), {1, 1});  // source link-layer address
  ra.insert(ra.end(), src_mac.begin(), src_mac.end());
  ra.insert(ra.end(), {3, 4, 64, 0xc0});  // prefix information: /64, on-link, autonomous
  put32(ra, 86400);                       // valid lifetime
  put32(ra, 14400);                       // preferred lifetime
  put32(ra, 0);
  ra.insert(ra.end(), prefix.begin(), prefix.end());
  return ipv6(kIcmp6, src, ip6("ff02::1"), ra, 2, 255);
}

// 127.0.0.1:port as a socket address.
inline sockaddr_in loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  return a;
}

// An ICMP echo request (type 8) carrying `payload`, checksummed.
inline Bytes icmp_echo(const Bytes& payload) {
  Bytes echo = {8, 0, 0, 0, 0x12, 0x34, 0, 1};
  echo.insert(echo.end(), payload.begin(), payload.end());
  uint16_t c = fold(sum_words(echo.data(), echo.size()));
  echo[2] = uint8_t(c >> 8);
  echo[3] = uint8_t(c);
  return echo;
}

inline Bytes text(std::string_view s) { return Bytes(s.begin(), s.end()); }

// What the tests look at in a frame for the guest.
struct Frame {
  Bytes raw;
  Mac dst{}, src{};
  uint16_t type = 0;
  // ARP
  uint16_t arp_op = 0;
  Mac arp_sender_mac{};
  uint32_t arp_sender_ip = 0, arp_target_ip = 0;
  // IPv4 and what it carries
  uint8_t proto = 0;
  uint32_t src_ip = 0, dst_ip = 0;
  bool ip_checksum_ok = false;
  uint16_t sport = 0, dport = 0;
  uint32_t seq = 0, ack = 0;
  uint8_t flags = 0, icmp_type = 0;
  Bytes payload;

  Bytes vnet;  // the virtio_net_hdr in front, for a backend with offloads

  // `hdr`: the length of a virtio_net_hdr in front of the Ethernet header (0 or 12).
  explicit Frame(Bytes f, size_t hdr = 0) : raw(std::move(f)) {
    if (hdr) {
      if (raw.size() < hdr) return;
      vnet.assign(raw.begin(), raw.begin() + long(hdr));
      raw.erase(raw.begin(), raw.begin() + long(hdr));
    }
    if (raw.size() < 14) return;
    std::copy_n(raw.begin(), 6, dst.begin());
    std::copy_n(raw.begin() + 6, 6, src.begin());
    type = get16(raw, 12);
    if (type == kArp && raw.size() >= 42) {
      arp_op = get16(raw, 20);
      std::copy_n(raw.begin() + 22, 6, arp_sender_mac.begin());
      arp_sender_ip = get32(raw, 28);
      arp_target_ip = get32(raw, 38);
    } else if (type == kIpv4 && raw.size() >= 34) {
      size_t ihl = size_t(raw[14] & 0xf) * 4;
      size_t total = get16(raw, 16);
      ip_checksum_ok = fold(sum_words(raw.data() + 14, ihl)) == 0;
      proto = raw[23];
      src_ip = get32(raw, 26);
      dst_ip = get32(raw, 30);
      size_t l4 = 14 + ihl, end = std::min(raw.size(), 14 + total);
      if (proto == kTcp && end >= l4 + 20) {
        sport = get16(raw, l4);
        dport = get16(raw, l4 + 2);
        seq = get32(raw, l4 + 4);
        ack = get32(raw, l4 + 8);
        flags = raw[l4 + 13];
        size_t off = size_t(raw[l4 + 12] >> 4) * 4;
        payload.assign(raw.begin() + long(l4 + off), raw.begin() + long(end));
      } else if (proto == kUdp && end >= l4 + 8) {
        sport = get16(raw, l4);
        dport = get16(raw, l4 + 2);
        payload.assign(raw.begin() + long(l4 + 8), raw.begin() + long(end));
      } else if (proto == kIcmp && end >= l4 + 8) {
        icmp_type = raw[l4];
        payload.assign(raw.begin() + long(l4 + 8), raw.begin() + long(end));
      }
    }
  }
};

// The device side: collects the frames the backend hands over.
struct Sink final : vm::NetDeviceSide {
  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<Bytes> frames;
  size_t header = 0;  // a virtio_net_hdr in front of each frame (backends with offloads)

  bool receive(std::span<const uint8_t> f) override {
    std::lock_guard lk(mu);
    frames.emplace_back(f.begin(), f.end());
    cv.notify_all();
    return true;
  }
  bool rx_full() const override { return false; }
  void flush_rx() override {}

  // The first frame (in arrival order) that `pred` accepts, removed from the queue; frames
  // before it stay. Gives up after 10 s (a failure, not a speed check).
  std::optional<Frame> wait(const std::function<bool(const Frame&)>& pred) {
    std::unique_lock lk(mu);
    auto deadline = std::chrono::steady_clock::now() + 10s;
    for (;;) {
      for (auto it = frames.begin(); it != frames.end(); ++it) {
        Frame f(*it, header);
        if (pred(f)) {
          frames.erase(it);
          return f;
        }
      }
      if (cv.wait_until(lk, deadline) == std::cv_status::timeout) return std::nullopt;
    }
  }
};

// A backend with its event loop running as the runner's network thread does (under that
// thread's seccomp filter in kill mode, so a system call the backend needs and the filter lacks
// ends the test binary), and the test as its guest at `guest` behind `gateway`. With
// `from_net_thread` the guest's frames reach the backend on that thread too, as the NIC's do in
// the runner (the guest's queue notifications are served there): send() hands a frame over and
// returns once it was sent; else the test's thread sends them itself.
template <class Backend>
struct Guest {
  Backend backend;
  Sink sink;
  UniqueFd stop{::eventfd(0, EFD_CLOEXEC)};
  UniqueFd kick{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
  std::mutex out_mu;
  std::condition_variable out_cv;
  std::deque<Bytes> outq;
  uint64_t queued = 0, sent = 0;
  std::thread loop;
  uint32_t guest = 0, gateway = 0;
  Mac gateway_mac{};
  bool from_net_thread = false;

  template <class... Args>
  explicit Guest(Args&&... args) : backend(std::forward<Args>(args)...) {
    sink.header = backend.offloads() ? vm::VirtioNet::kHdrSize : 0;
    backend.attach(&sink);
    loop = std::thread([this] {
      vm::install_thread_seccomp(vm::ThreadRole::kNet, vm::SeccompMode::kKill);
      const vm::NetBackend::Watch w[] = {{stop.get(), [] { return false; }},
                                         {kick.get(), [this] {
                                            uint64_t v;
                                            (void)!::read(kick.get(), &v, sizeof v);
                                            std::unique_lock lk(out_mu);
                                            while (!outq.empty()) {
                                              Bytes f = std::move(outq.front());
                                              outq.pop_front();
                                              lk.unlock();
                                              backend.send(f);
                                              lk.lock();
                                              ++sent;
                                            }
                                            out_cv.notify_all();
                                            return true;
                                          }}};
      backend.run(w);
    });
  }
  ~Guest() {
    uint64_t one = 1;
    (void)!::write(stop.get(), &one, sizeof one);
    loop.join();
    backend.attach(nullptr);
  }
  Guest(const Guest&) = delete;
  Guest& operator=(const Guest&) = delete;

  // A frame from the guest as it is (with offloads: the virtio_net_hdr in front); returns once
  // the backend has taken it (on the network thread: gives up after 10 s).
  void send_raw(Bytes f) {
    if (!from_net_thread) return backend.send(f);
    std::unique_lock lk(out_mu);
    outq.push_back(std::move(f));
    const uint64_t mine = ++queued;
    uint64_t one = 1;
    (void)!::write(kick.get(), &one, sizeof one);
    out_cv.wait_for(lk, 10s, [&] { return sent >= mine; });
  }
  // A frame from the guest; with offloads behind a header `vnet` (default: none used).
  void send(const Bytes& f, Bytes vnet = {}) {
    if (!backend.offloads()) return send_raw(f);
    vnet.resize(vm::VirtioNet::kHdrSize, 0);
    vnet.insert(vnet.end(), f.begin(), f.end());
    send_raw(std::move(vnet));
  }
  void send_ip(const Bytes& packet) { send(ether(gateway_mac, kGuestMac, kIpv4, packet)); }
  // The guest asks for the gateway's MAC.
  bool resolve_gateway() {
    send(arp_request(guest, gateway));
    auto r = sink.wait([this](const Frame& f) {
      return f.type == kArp && f.arp_op == 2 && f.arp_sender_ip == gateway;
    });
    if (r) gateway_mac = r->arp_sender_mac;
    return r.has_value();
  }
  // Answers the host's ARP request for the guest's address.
  bool answer_arp() {
    auto q = sink.wait([this](const Frame& f) {
      return f.type == kArp && f.arp_op == 1 && f.arp_target_ip == guest;
    });
    if (!q) return false;
    send(arp_reply(guest, q->src, q->arp_sender_ip));
    return true;
  }
};

}  // namespace img2vm::testing::frames
