// The libslirp backend without any VM: the test plays the guest with raw Ethernet frames
// (ARP, ICMP, DHCP, UDP and a whole TCP connection) while the backend's event loop runs on a
// thread under the network thread's seccomp filter in kill mode, as in the runner, so a system
// call libslirp needs and the filter lacks ends the test binary. Host sides bind 127.0.0.1.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/vm/net_slirp.hpp"
#include "img2vm/vm/seccomp.hpp"

using namespace img2vm;
using namespace img2vm::vm;
using namespace std::chrono_literals;

namespace {

using Bytes = std::vector<uint8_t>;
using Mac = std::array<uint8_t, 6>;

constexpr Mac kGuestMac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
constexpr Mac kBroadcast = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
constexpr uint16_t kArp = 0x0806, kIpv4 = 0x0800;
constexpr uint8_t kIcmp = 1, kTcp = 6, kUdp = 17;
constexpr uint8_t kFin = 1, kSyn = 2, kRst = 4, kPsh = 8, kAck = 16;

uint32_t ip(std::string_view s) {
  in_addr a{};
  if (::inet_pton(AF_INET, std::string(s).c_str(), &a) != 1) std::abort();
  return ntohl(a.s_addr);
}
const uint32_t kGuestIp = ip(usernet::kGuest), kGatewayIp = ip(usernet::kGateway), kDnsIp = ip(usernet::kDns);

void put16(Bytes& b, uint16_t v) {
  b.push_back(uint8_t(v >> 8));
  b.push_back(uint8_t(v));
}
void put32(Bytes& b, uint32_t v) {
  put16(b, uint16_t(v >> 16));
  put16(b, uint16_t(v));
}
uint16_t get16(const Bytes& b, size_t o) { return uint16_t(b.at(o) << 8 | b.at(o + 1)); }
uint32_t get32(const Bytes& b, size_t o) { return uint32_t(get16(b, o)) << 16 | get16(b, o + 2); }

uint32_t sum_words(const uint8_t* p, size_t n, uint32_t sum = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) sum += uint32_t(p[i] << 8 | p[i + 1]);
  if (n & 1) sum += uint32_t(p[n - 1] << 8);
  return sum;
}
uint16_t fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return uint16_t(~sum);
}

Bytes ether(const Mac& dst, const Mac& src, uint16_t type, const Bytes& payload) {
  Bytes f(dst.begin(), dst.end());
  f.insert(f.end(), src.begin(), src.end());
  put16(f, type);
  f.insert(f.end(), payload.begin(), payload.end());
  return f;
}

Bytes arp_request(uint32_t sender_ip, uint32_t target_ip) {
  Bytes a;
  put16(a, 1);  // Ethernet
  put16(a, kIpv4);
  a.push_back(6);
  a.push_back(4);
  put16(a, 1);  // request
  a.insert(a.end(), kGuestMac.begin(), kGuestMac.end());
  put32(a, sender_ip);
  a.insert(a.end(), 6, 0);
  put32(a, target_ip);
  return ether(kBroadcast, kGuestMac, kArp, a);
}

Bytes ipv4(uint8_t proto, uint32_t src, uint32_t dst, const Bytes& payload) {
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
void l4_checksum(Bytes& seg, uint8_t proto, uint32_t src, uint32_t dst, size_t csum_off) {
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

Bytes udp(uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport, const Bytes& payload) {
  Bytes u;
  put16(u, sport);
  put16(u, dport);
  put16(u, uint16_t(8 + payload.size()));
  put16(u, 0);
  u.insert(u.end(), payload.begin(), payload.end());
  l4_checksum(u, kUdp, src, dst, 6);
  return ipv4(kUdp, src, dst, u);
}

Bytes tcp(uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport, uint32_t seq, uint32_t ack, uint8_t flags,
          const Bytes& payload = {}) {
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

Bytes text(std::string_view s) { return Bytes(s.begin(), s.end()); }

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

  explicit Frame(Bytes f) : raw(std::move(f)) {
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
struct Sink final : NetDeviceSide {
  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<Bytes> frames;

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
        Frame f(*it);
        if (pred(f)) {
          frames.erase(it);
          return f;
        }
      }
      if (cv.wait_until(lk, deadline) == std::cv_status::timeout) return std::nullopt;
    }
  }
};

// A backend with its event loop running as the runner's network thread does.
struct Stack {
  SlirpBackend backend;
  Sink sink;
  UniqueFd stop{::eventfd(0, EFD_CLOEXEC)};
  std::thread loop;
  Mac gateway_mac{};

  explicit Stack(const UserNetConfig& cfg) : backend(cfg, 1500) {
    backend.attach(&sink);
    loop = std::thread([this] {
      install_thread_seccomp(ThreadRole::kNet, SeccompMode::kKill);
      const NetBackend::Watch w[] = {{stop.get(), [] { return false; }}};
      backend.run(w);
    });
  }
  ~Stack() {
    uint64_t one = 1;
    (void)!::write(stop.get(), &one, sizeof one);
    loop.join();
    backend.attach(nullptr);
  }
  void send(const Bytes& f) { backend.send(f); }
  // The guest asks for the gateway's MAC (slirp learns the guest's on the way).
  bool resolve_gateway() {
    send(arp_request(kGuestIp, kGatewayIp));
    auto r = sink.wait([](const Frame& f) { return f.type == kArp && f.arp_op == 2; });
    if (r) gateway_mac = r->arp_sender_mac;
    return r.has_value();
  }
  void send_ip(const Bytes& packet) { send(ether(gateway_mac, kGuestMac, kIpv4, packet)); }
};

UniqueFd host_socket(int type, uint16_t& port) {
  UniqueFd s(::socket(AF_INET, type | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  if (type == SOCK_STREAM) {
    EXPECT_EQ(::listen(s.get(), 4), 0);
  }
  socklen_t len = sizeof a;
  ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return s;
}

bool readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 10000) == 1;
}

UserNetConfig config(bool outbound, bool host_loopback, std::vector<PortForward> fwds = {}) {
  UserNetConfig c;
  c.outbound = outbound;
  c.host_loopback = host_loopback;
  c.forwards = std::move(fwds);
  return c;
}

Bytes dhcp_discover() {
  Bytes b = {1, 1, 6, 0};
  put32(b, 0x12345678);  // xid
  put16(b, 0);
  put16(b, 0x8000);      // broadcast reply
  b.insert(b.end(), 16, 0);  // ciaddr yiaddr siaddr giaddr
  b.insert(b.end(), kGuestMac.begin(), kGuestMac.end());
  b.insert(b.end(), 10 + 64 + 128, 0);  // rest of chaddr, sname, file
  for (uint8_t c : {99, 130, 83, 99, 53, 1, 1, 255}) b.push_back(c);
  b.resize(236 + 312, 0);
  return b;
}

// The DHCP options of a BOOTP reply: code -> value.
std::map<uint8_t, Bytes> dhcp_options(const Bytes& bootp) {
  std::map<uint8_t, Bytes> out;
  for (size_t i = 240; i < bootp.size();) {
    uint8_t code = bootp[i];
    if (code == 255) break;
    if (code == 0) {
      ++i;
      continue;
    }
    if (i + 1 >= bootp.size()) break;
    uint8_t len = bootp[i + 1];
    if (i + 2 + len > bootp.size()) break;
    out[code] = Bytes(bootp.begin() + long(i + 2), bootp.begin() + long(i + 2 + len));
    i += 2 + len;
  }
  return out;
}
Bytes addr_bytes(uint32_t a) {
  Bytes b;
  put32(b, a);
  return b;
}

}  // namespace

TEST(SlirpBackend, AnswersArpForTheGatewayAndPing) {
  Stack s(config(true, false));
  s.send(arp_request(kGuestIp, kGatewayIp));
  auto r = s.sink.wait([](const Frame& f) { return f.type == kArp; });
  ASSERT_TRUE(r) << "no ARP reply";
  EXPECT_EQ(r->arp_op, 2);
  EXPECT_EQ(r->arp_sender_ip, kGatewayIp);
  EXPECT_EQ(r->arp_target_ip, kGuestIp);
  EXPECT_EQ(r->dst, kGuestMac);
  s.gateway_mac = r->arp_sender_mac;

  // ICMP echo to the gateway comes back as an echo reply.
  Bytes echo = {8, 0, 0, 0, 0x12, 0x34, 0, 1};
  for (char c : std::string("ping payload")) echo.push_back(uint8_t(c));
  uint16_t c = fold(sum_words(echo.data(), echo.size()));
  echo[2] = uint8_t(c >> 8);
  echo[3] = uint8_t(c);
  s.send_ip(ipv4(kIcmp, kGuestIp, kGatewayIp, echo));
  auto pong = s.sink.wait([](const Frame& f) { return f.proto == kIcmp; });
  ASSERT_TRUE(pong) << "no echo reply";
  EXPECT_EQ(pong->icmp_type, 0);
  EXPECT_EQ(pong->src_ip, kGatewayIp);
  EXPECT_EQ(pong->dst_ip, kGuestIp);
  EXPECT_TRUE(pong->ip_checksum_ok);
  EXPECT_EQ(pong->payload, text("ping payload"));
}

TEST(SlirpBackend, DhcpOffersTheDocumentedAddresses) {
  Stack s(config(true, false));
  s.send(ether(kBroadcast, kGuestMac, kIpv4, udp(0, 68, 0xffffffff, 67, dhcp_discover())));
  auto r = s.sink.wait([](const Frame& f) { return f.proto == kUdp && f.sport == 67; });
  ASSERT_TRUE(r) << "no DHCP offer";
  EXPECT_EQ(r->dport, 68);
  ASSERT_GE(r->payload.size(), 240u);
  EXPECT_EQ(get32(r->payload, 16), kGuestIp) << "yiaddr";
  auto opt = dhcp_options(r->payload);
  EXPECT_EQ(opt[53], Bytes{2}) << "DHCPOFFER";
  EXPECT_EQ(opt[1], addr_bytes(0xffffff00)) << "netmask /24";
  EXPECT_EQ(opt[3], addr_bytes(kGatewayIp)) << "router";
  EXPECT_EQ(opt[6], addr_bytes(kDnsIp)) << "DNS";
}

TEST(SlirpBackend, UdpReachesTheHostLoopbackWhenAllowed) {
  Stack s(config(true, true));
  ASSERT_TRUE(s.resolve_gateway());
  uint16_t port = 0;
  UniqueFd host = host_socket(SOCK_DGRAM, port);
  s.send_ip(udp(kGuestIp, 40000, kGatewayIp, port, text("ping")));
  ASSERT_TRUE(readable(host.get())) << "the datagram never reached the host";
  char buf[64];
  sockaddr_in from{};
  socklen_t fl = sizeof from;
  ssize_t n = ::recvfrom(host.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &fl);
  ASSERT_EQ(n, 4);
  EXPECT_EQ(std::string(buf, 4), "ping");
  EXPECT_EQ(ntohl(from.sin_addr.s_addr), INADDR_LOOPBACK);
  ASSERT_EQ(::sendto(host.get(), "pong", 4, 0, reinterpret_cast<sockaddr*>(&from), fl), 4);
  auto r = s.sink.wait([](const Frame& f) { return f.proto == kUdp && f.dport == 40000; });
  ASSERT_TRUE(r) << "no reply for the guest";
  EXPECT_EQ(r->src_ip, kGatewayIp);
  EXPECT_EQ(r->sport, port);
  EXPECT_EQ(r->dst_ip, kGuestIp);
  EXPECT_EQ(r->dst, kGuestMac);
  EXPECT_EQ(r->payload, text("pong"));
}

TEST(SlirpBackend, HostLoopbackIsClosedByDefault) {
  Stack s(config(true, false));
  ASSERT_TRUE(s.resolve_gateway());
  uint16_t port = 0;
  UniqueFd listener = host_socket(SOCK_STREAM, port);
  s.send_ip(tcp(kGuestIp, 40001, kGatewayIp, port, 1000, 0, kSyn));
  auto r = s.sink.wait([](const Frame& f) { return f.proto == kTcp && f.dport == 40001; });
  ASSERT_TRUE(r) << "the refused connection was not answered";
  EXPECT_EQ(r->flags, kRst | kAck) << "connection refused";
  EXPECT_EQ(r->ack, 1001u);
  EXPECT_EQ(r->src_ip, kGatewayIp);
  EXPECT_EQ(r->sport, port);
  EXPECT_EQ(r->dst, kGuestMac);
  EXPECT_TRUE(r->ip_checksum_ok);
  ::fcntl(listener.get(), F_SETFL, O_NONBLOCK);
  EXPECT_LT(::accept(listener.get(), nullptr, nullptr), 0) << "the host service was reached";
  EXPECT_EQ(errno, EAGAIN);

  // UDP to the host's loopback is dropped (libslirp would have sent it by now: send() is
  // synchronous), and so is a broadcast, which libslirp also sends to 127.0.0.1.
  UniqueFd host = host_socket(SOCK_DGRAM, port);
  s.send_ip(udp(kGuestIp, 40000, kGatewayIp, port, text("leak")));
  s.send_ip(udp(kGuestIp, 40000, 0xffffffff, port, text("leak")));
  char buf[8];
  EXPECT_LT(::recv(host.get(), buf, sizeof buf, MSG_DONTWAIT), 0) << "a datagram reached the host's loopback";
  EXPECT_EQ(errno, EAGAIN);
  // The gateway still answers pings (inside libslirp).
  Bytes echo = {8, 0, 0xf7, 0xfe, 0, 0, 0, 1};
  s.send_ip(ipv4(kIcmp, kGuestIp, kGatewayIp, echo));
  EXPECT_TRUE(s.sink.wait([](const Frame& f) { return f.proto == kIcmp && f.icmp_type == 0; }));
}

TEST(SlirpBackend, WithoutOutboundConnectionsAreReset) {
  Stack s(config(false, true));
  ASSERT_TRUE(s.resolve_gateway());
  // Host loopback allowed, outbound not: the host's 127.0.0.1 is reachable, nothing else.
  uint16_t port = 0;
  UniqueFd listener = host_socket(SOCK_STREAM, port);
  s.send_ip(tcp(kGuestIp, 40003, kGatewayIp, port, 9000, 0, kSyn));
  auto syn_ack = s.sink.wait([](const Frame& f) { return f.proto == kTcp && f.dport == 40003; });
  ASSERT_TRUE(syn_ack);
  EXPECT_EQ(syn_ack->flags, kSyn | kAck) << "host loopback is allowed here";
  ASSERT_TRUE(readable(listener.get()));
  UniqueFd accepted(::accept(listener.get(), nullptr, nullptr));
  EXPECT_TRUE(accepted);
  // A SYN to an outside address (TEST-NET-1) and to the DNS address are refused.
  s.send_ip(tcp(kGuestIp, 40004, ip("192.0.2.1"), 80, 1, 0, kSyn));
  auto out = s.sink.wait([](const Frame& f) { return f.proto == kTcp && f.dport == 40004; });
  ASSERT_TRUE(out);
  EXPECT_EQ(out->flags, kRst | kAck);
  EXPECT_EQ(out->src_ip, ip("192.0.2.1"));
  s.send_ip(tcp(kGuestIp, 40005, kDnsIp, 53, 1, 0, kSyn));
  auto dns = s.sink.wait([](const Frame& f) { return f.proto == kTcp && f.dport == 40005; });
  ASSERT_TRUE(dns);
  EXPECT_EQ(dns->flags, kRst | kAck);

  // DHCP still answers.
  s.send(ether(kBroadcast, kGuestMac, kIpv4, udp(0, 68, 0xffffffff, 67, dhcp_discover())));
  auto offer = s.sink.wait([](const Frame& f) { return f.proto == kUdp && f.sport == 67; });
  ASSERT_TRUE(offer);
  EXPECT_EQ(get32(offer->payload, 16), kGuestIp);
}

TEST(SlirpBackend, DnsForwardingRunsInsideTheSeccompFilter) {
  // A query to 10.0.2.3 makes libslirp stat and read /etc/resolv.conf on the network thread;
  // the filter (kill mode) must allow that. Whether an answer comes depends on the host's
  // resolver, so the test checks that the loop is alive afterwards.
  Stack s(config(true, false));
  ASSERT_TRUE(s.resolve_gateway());
  Bytes query = {0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0, 0, 1, 0, 1};
  s.send_ip(udp(kGuestIp, 40003, kDnsIp, 53, query));
  s.send_ip(udp(kGuestIp, 40004, kDnsIp, 53, query));
  EXPECT_TRUE(s.resolve_gateway()) << "the event loop stopped after a DNS query";
}

TEST(SlirpBackend, PublishedPortCarriesATcpConnection) {
  uint16_t free_port = 0;
  { UniqueFd probe = host_socket(SOCK_STREAM, free_port); }
  Stack s(config(false, false, parse_port_forward("127.0.0.1:" + std::to_string(free_port) + ":80")));
  ASSERT_EQ(s.backend.published().size(), 1u);
  EXPECT_EQ(s.backend.published()[0].host_port, free_port);
  ASSERT_TRUE(s.resolve_gateway());  // slirp now knows the guest's MAC

  UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(free_port);
  ASSERT_EQ(::connect(client.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::write(client.get(), "hello", 5), 5);

  auto syn = s.sink.wait([](const Frame& f) { return f.proto == kTcp && (f.flags & kSyn); });
  ASSERT_TRUE(syn) << "no SYN toward the guest";
  EXPECT_EQ(syn->dst, kGuestMac);
  EXPECT_EQ(syn->dst_ip, kGuestIp);
  EXPECT_EQ(syn->dport, 80);
  EXPECT_EQ(syn->src_ip, kGatewayIp) << "host connections appear to come from the gateway";
  EXPECT_FALSE(syn->flags & kAck);
  const uint16_t peer = syn->sport;
  const uint32_t iss = 7000;
  uint32_t their = syn->seq + 1;
  s.send_ip(tcp(kGuestIp, 80, kGatewayIp, peer, iss, their, kSyn | kAck));

  auto data = s.sink.wait([&](const Frame& f) { return f.proto == kTcp && f.sport == peer && !f.payload.empty(); });
  ASSERT_TRUE(data) << "the host's bytes never reached the guest";
  EXPECT_EQ(data->payload, text("hello"));
  EXPECT_EQ(data->seq, their);
  EXPECT_EQ(data->ack, iss + 1);
  their += 5;
  s.send_ip(tcp(kGuestIp, 80, kGatewayIp, peer, iss + 1, their, kAck | kPsh, text("world")));
  ASSERT_TRUE(readable(client.get()));
  char buf[16];
  ASSERT_EQ(::read(client.get(), buf, sizeof buf), 5);
  EXPECT_EQ(std::string(buf, 5), "world");

  // The host closes: the guest sees a FIN.
  ::shutdown(client.get(), SHUT_WR);
  auto fin = s.sink.wait([&](const Frame& f) { return f.proto == kTcp && f.sport == peer && (f.flags & kFin); });
  ASSERT_TRUE(fin) << "no FIN";
}

TEST(SlirpBackend, PublishedPortWithoutHostPortGetsAFreeOne) {
  Stack s(config(true, false, parse_port_forward("127.0.0.1::8080")));
  ASSERT_EQ(s.backend.published().size(), 1u);
  uint16_t port = s.backend.published()[0].host_port;
  EXPECT_NE(port, 0);
  ASSERT_TRUE(s.resolve_gateway());
  UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  ASSERT_EQ(::connect(client.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  auto syn = s.sink.wait([](const Frame& f) { return f.proto == kTcp && (f.flags & kSyn); });
  ASSERT_TRUE(syn);
  EXPECT_EQ(syn->dport, 8080);
}

TEST(SlirpBackend, PublishedUdpPortReachesTheGuest) {
  uint16_t free_port = 0;
  { UniqueFd probe = host_socket(SOCK_DGRAM, free_port); }
  // Neither outbound nor host loopback: the guest may still answer the published port's
  // client on the host's loopback, and only that.
  Stack s(config(false, false, parse_port_forward("127.0.0.1:" + std::to_string(free_port) + ":5353/udp")));
  ASSERT_TRUE(s.resolve_gateway());
  UniqueFd client(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(free_port);
  ASSERT_EQ(::sendto(client.get(), "query", 5, 0, reinterpret_cast<sockaddr*>(&a), sizeof a), 5);
  auto r = s.sink.wait([](const Frame& f) { return f.proto == kUdp && f.dport == 5353; });
  ASSERT_TRUE(r) << "the datagram never reached the guest";
  EXPECT_EQ(r->dst_ip, kGuestIp);
  EXPECT_EQ(r->payload, text("query"));
  // The guest answers; the host client gets it from the published port.
  s.send_ip(udp(kGuestIp, 5353, r->src_ip, r->sport, text("answer")));
  ASSERT_TRUE(readable(client.get()));
  char buf[16];
  ASSERT_EQ(::recv(client.get(), buf, sizeof buf, 0), 6);
  EXPECT_EQ(std::string(buf, 6), "answer");

  // From the published port to another host port: not an answer, dropped.
  uint16_t other_port = 0;
  UniqueFd other = host_socket(SOCK_DGRAM, other_port);
  s.send_ip(udp(kGuestIp, 5353, kGatewayIp, other_port, text("leak")));
  s.send_ip(udp(kGuestIp, 5353, r->src_ip, uint16_t(r->sport + 1), text("leak")));
  EXPECT_LT(::recv(other.get(), buf, sizeof buf, MSG_DONTWAIT), 0) << "the guest reached a host port it was not asked by";
  EXPECT_EQ(errno, EAGAIN);
  // Answering again still works.
  s.send_ip(udp(kGuestIp, 5353, r->src_ip, r->sport, text("again")));
  ASSERT_TRUE(readable(client.get()));
  ASSERT_EQ(::recv(client.get(), buf, sizeof buf, 0), 5);
}

TEST(SlirpBackend, PortAlreadyInUseNamesThePort) {
  for (int type : {SOCK_STREAM, SOCK_DGRAM}) {
    uint16_t port = 0;
    UniqueFd taken = host_socket(type, port);
    std::string spec = "127.0.0.1:" + std::to_string(port) + ":80" + (type == SOCK_DGRAM ? "/udp" : "");
    try {
      SlirpBackend b(config(true, false, parse_port_forward(spec)), 1500);
      ADD_FAILURE() << "publishing a port in use succeeded: " << spec;
    } catch (const Error& e) {
      std::string want = "host port " + std::to_string(port) + (type == SOCK_DGRAM ? "/udp" : "/tcp") + " is already in use";
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("cannot publish 127.0.0.1:" + std::to_string(port) + "->80"),
                std::string::npos)
          << e.what();
    }
  }
}

TEST(SlirpBackend, BadMtuIsRefused) {
  EXPECT_THROW(SlirpBackend(config(true, false), 100), Error);
}
