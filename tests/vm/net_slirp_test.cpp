// The libslirp backend without any VM: the test plays the guest with raw Ethernet frames
// (ARP, ICMP, DHCP, UDP and a whole TCP connection) while the backend's event loop runs on a
// thread under the network thread's seccomp filter in kill mode, as in the runner, so a system
// call libslirp needs and the filter lacks ends the test binary. Host sides bind 127.0.0.1.
#include "img2vm/vm/net_slirp.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
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
#include <set>
#include <thread>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/vm/seccomp.hpp"
#include "net_frames.hpp"
#include "process.hpp"

using namespace img2vm;
using namespace img2vm::vm;
using namespace std::chrono_literals;
using namespace img2vm::testing::frames;
using img2vm::testing::run_command;

namespace {

const uint32_t kGuestIp = ip(usernet::kGuest), kGatewayIp = ip(usernet::kGateway),
               kDnsIp = ip(usernet::kDns);

// The guest's frames are sent from the network thread, which opens no file (DNS included).
struct Stack : Guest<SlirpBackend> {
  explicit Stack(const UserNetConfig& cfg) : Guest(cfg, 1500) {
    guest = kGuestIp;
    gateway = kGatewayIp;
    from_net_thread = true;
  }
};

// A socket on the host's 127.0.0.1 (or `addr`: INADDR_ANY for every address) and a free port.
UniqueFd host_socket(int type, uint16_t& port, uint32_t addr = INADDR_LOOPBACK) {
  UniqueFd s(::socket(AF_INET, type | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(addr);
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
  put16(b, 0x8000);          // broadcast reply
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

// Brings up the loopback of the network namespace the test process has just entered.
void loopback_up() {
  UniqueFd sock(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq lo{};
  std::strcpy(lo.ifr_name, "lo");
  ASSERT_EQ(::ioctl(sock.get(), SIOCGIFFLAGS, &lo), 0);
  lo.ifr_flags |= IFF_UP;
  ASSERT_EQ(::ioctl(sock.get(), SIOCSIFFLAGS, &lo), 0) << std::strerror(errno);
}

// The datagrams on `fd` up to and including the one saying `last` (bounded wait).
std::vector<std::string> datagrams_until(int fd, const std::string& last) {
  std::vector<std::string> got;
  while (got.empty() || got.back() != last) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 10000) != 1) break;
    char buf[64];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n >= 0) got.emplace_back(buf, size_t(n));
  }
  return got;
}

// The local addresses of the connections accepted on `listener` up to and including one to
// `last` (bounded wait).
std::vector<uint32_t> connections_until(int listener, uint32_t last) {
  std::vector<uint32_t> got;
  while (got.empty() || got.back() != last) {
    pollfd p{listener, POLLIN, 0};
    if (::poll(&p, 1, 10000) != 1) break;
    UniqueFd c(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
    if (!c) continue;
    sockaddr_in a{};
    socklen_t len = sizeof a;
    ::getsockname(c.get(), reinterpret_cast<sockaddr*>(&a), &len);
    got.push_back(ntohl(a.sin_addr.s_addr));
  }
  return got;
}

std::string ip_text(uint32_t a) {
  in_addr i{htonl(a)};
  char buf[INET_ADDRSTRLEN];
  return ::inet_ntop(AF_INET, &i, buf, sizeof buf);
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

// The guest's datagram goes out before the event loop has run a single round (as a fast guest's
// first DNS query may). libslirp dates the socket it opens from a clock only its poll sets; left
// at zero, the socket counted as expired at the loop's next round and was closed, so the
// host's answer never reached the guest. The loop's rounds are observed through a watch, so
// the answer is sent only after the loop has polled and rebuilt its poll set: deterministic, no
// sleeping. (The loss needs a host up for more than the 240 s a UDP socket lives; every
// machine that has just built this project is.)
TEST(SlirpBackend, DatagramSentBeforeTheLoopsFirstRoundGetsItsAnswer) {
  SlirpBackend backend(config(true, true), 1500);
  Sink sink;
  backend.attach(&sink);
  UniqueFd stop(::eventfd(0, EFD_CLOEXEC)), step(::eventfd(0, EFD_CLOEXEC));
  std::mutex mu;
  std::condition_variable cv;
  int rounds = 0;

  backend.send(arp_request(kGuestIp, kGatewayIp));  // answered inside send()
  auto arp = sink.wait([](const Frame& f) { return f.type == kArp && f.arp_op == 2; });
  ASSERT_TRUE(arp);
  uint16_t port = 0;
  UniqueFd host = host_socket(SOCK_DGRAM, port);
  backend.send(ether(arp->arp_sender_mac, kGuestMac, kIpv4,
                     udp(kGuestIp, 40010, kGatewayIp, port, text("ping"))));
  ASSERT_TRUE(readable(host.get())) << "the datagram never reached the host";
  char buf[16];
  sockaddr_in from{};
  socklen_t fl = sizeof from;
  ASSERT_EQ(::recvfrom(host.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &fl), 4);

  std::thread loop([&] {
    install_thread_seccomp(ThreadRole::kNet, SeccompMode::kKill);
    const NetBackend::Watch w[] = {{stop.get(), [] { return false; }},
                                   {step.get(), [&] {
                                      uint64_t v;
                                      (void)!::read(step.get(), &v, sizeof v);
                                      std::lock_guard lk(mu);
                                      ++rounds;
                                      cv.notify_all();
                                      return true;
                                    }}};
    backend.run(w);
  });
  // Two rounds seen by the watch: between them the loop rebuilt its poll set from libslirp's
  // sockets (where an expired one is closed).
  for (int want = 1; want <= 2; ++want) {
    uint64_t one = 1;
    ASSERT_EQ(::write(step.get(), &one, sizeof one), 8);
    std::unique_lock lk(mu);
    ASSERT_TRUE(cv.wait_for(lk, 10s, [&] { return rounds >= want; })) << "the loop did not run";
  }
  ASSERT_EQ(::sendto(host.get(), "pong", 4, 0, reinterpret_cast<sockaddr*>(&from), fl), 4);
  auto r = sink.wait([](const Frame& f) { return f.proto == kUdp && f.dport == 40010; });
  EXPECT_TRUE(r) << "the answer to the guest's first datagram was lost";
  if (r) {
    EXPECT_EQ(r->payload, text("pong"));
  }

  uint64_t one = 1;
  (void)!::write(stop.get(), &one, sizeof one);
  loop.join();
  backend.attach(nullptr);
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
  EXPECT_LT(::recv(host.get(), buf, sizeof buf, MSG_DONTWAIT), 0)
      << "a datagram reached the host's loopback";
  EXPECT_EQ(errno, EAGAIN);
  // The gateway still answers pings (inside libslirp).
  Bytes echo = {8, 0, 0xf7, 0xfe, 0, 0, 0, 1};
  s.send_ip(ipv4(kIcmp, kGuestIp, kGatewayIp, echo));
  EXPECT_TRUE(s.sink.wait([](const Frame& f) { return f.proto == kIcmp && f.icmp_type == 0; }));
}

// libslirp connects the guest to whatever address it names, and sends a few to the host's
// loopback itself. In a network namespace of the test's own, with sockets on every address of
// the host there: without host_loopback, no datagram or connection to 127.0.0.0/8, 0.0.0.0,
// 255.255.255.255, multicast or the virtual network's other addresses (given to the host here,
// as libslirp sends them to the host's own network) reaches them, each SYN is refused; the
// host's own address on another network (outbound) does, sent after them. With host_loopback,
// the loopback does and (without outbound) the other network does not.
TEST(SlirpBackend, NothingReachesTheHostItselfWithoutHostLoopback) {
  if (::unshare(CLONE_NEWNET) != 0)
    GTEST_SKIP() << "needs root for a network namespace: " << std::strerror(errno);
  loopback_up();
  // The host's addresses on a network of its own (a veth pair: it has a carrier).
  for (std::vector<std::string> cmd : {std::vector<std::string>{"ip", "link", "add", "net0", "type",
                                                                "veth", "peer", "name", "peer0"},
                                       {"ip", "link", "set", "peer0", "up"},
                                       {"ip", "link", "set", "net0", "up"},
                                       {"ip", "addr", "add", "192.0.2.10/24", "dev", "net0"},
                                       {"ip", "addr", "add", "10.0.2.4/32", "dev", "net0"},
                                       {"ip", "addr", "add", "10.0.2.255/32", "dev", "net0"},
                                       {"ip", "route", "add", "224.0.0.0/4", "dev", "net0"}})
    ASSERT_EQ(run_command(cmd).exit_code, 0) << run_command(cmd).describe();
  uint16_t uport = 0, tport = 0;
  UniqueFd u = host_socket(SOCK_DGRAM, uport, INADDR_ANY);
  UniqueFd t = host_socket(SOCK_STREAM, tport, INADDR_ANY);
  const uint32_t own = ip("192.0.2.10");
  {
    // The namespace delivers each of these to the sockets (multicast is looped back).
    UniqueFd c(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    for (const char* d : {"127.0.0.2", "0.0.0.0", "10.0.2.4", "224.0.0.1", "192.0.2.10"}) {
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(uport);
      a.sin_addr.s_addr = htonl(ip(d));
      ASSERT_EQ(::sendto(c.get(), d, std::strlen(d), 0, reinterpret_cast<sockaddr*>(&a), sizeof a),
                ssize_t(std::strlen(d)))
          << d << ": " << std::strerror(errno);
    }
    std::set<std::string> got;
    for (pollfd p{u.get(), POLLIN, 0}; got.size() < 5 && ::poll(&p, 1, 10000) == 1;) {
      char buf[64];
      ssize_t n = ::recv(u.get(), buf, sizeof buf, 0);
      if (n > 0) got.emplace(buf, size_t(n));
    }
    ASSERT_EQ(got.size(), 5u) << "the namespace does not deliver them all";
  }

  const std::vector<std::string> host = {"127.0.0.1", "127.0.0.2", "0.0.0.0",
                                         "10.0.2.2",  "10.0.2.4",  "10.0.2.255"};
  {
    Stack s(config(true, false));
    ASSERT_TRUE(s.resolve_gateway());
    uint16_t sport = 41000;
    for (const auto& d : host) {
      s.send_ip(udp(kGuestIp, sport, ip(d), uport, text(d)));
      s.send_ip(tcp(kGuestIp, sport, ip(d), tport, 1000, 0, kSyn));
      auto r = s.sink.wait([&](const Frame& f) { return f.proto == kTcp && f.dport == sport; });
      ASSERT_TRUE(r) << d << ": the SYN was not answered";
      EXPECT_EQ(r->flags, kRst | kAck) << d << ": not refused";
      ++sport;
    }
    for (const char* d : {"255.255.255.255", "224.0.0.1"})
      s.send_ip(udp(kGuestIp, sport++, ip(d), uport, text(d)));
    // The host's own address on another network is outside: allowed.
    s.send_ip(udp(kGuestIp, sport, own, uport, text("192.0.2.10")));
    EXPECT_EQ(datagrams_until(u.get(), "192.0.2.10"), std::vector<std::string>{"192.0.2.10"});
    s.send_ip(tcp(kGuestIp, sport, own, tport, 1000, 0, kSyn));
    auto got = connections_until(t.get(), own);
    std::vector<std::string> names;
    for (uint32_t a : got) names.push_back(ip_text(a));
    EXPECT_EQ(names, std::vector<std::string>{"192.0.2.10"});
  }
  {
    Stack s(config(false, true));
    ASSERT_TRUE(s.resolve_gateway());
    s.send_ip(udp(kGuestIp, 42000, own, uport, text("192.0.2.10")));
    s.send_ip(udp(kGuestIp, 42001, ip("224.0.0.1"), uport, text("224.0.0.1")));
    s.send_ip(udp(kGuestIp, 42002, ip("127.0.0.2"), uport, text("127.0.0.2")));
    EXPECT_EQ(datagrams_until(u.get(), "127.0.0.2"), std::vector<std::string>{"127.0.0.2"});
  }
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
  // A query to 10.0.2.3 makes libslirp look at /etc/resolv.conf on the network thread (stat
  // only: the backend read it when it was made, and the filter refuses open). Whether an answer
  // comes depends on the host's resolver, so the test checks that the loop is alive afterwards.
  Stack s(config(true, false));
  ASSERT_TRUE(s.resolve_gateway());
  Bytes query = {0xab, 0xcd, 1,   0,   0,   1,   0,   0, 0, 0, 0, 0, 7,
                 'e',  'x',  'a', 'm', 'p', 'l', 'e', 0, 0, 1, 0, 1};
  s.send_ip(udp(kGuestIp, 40003, kDnsIp, 53, query));
  s.send_ip(udp(kGuestIp, 40004, kDnsIp, 53, query));
  EXPECT_TRUE(s.resolve_gateway()) << "the event loop stopped after a DNS query";
}

// DNS forwarding end to end, in a network and mount namespace of the test's own: the host's
// /etc/resolv.conf (a bind mount there) names a server the test runs on 127.0.0.1:53; the
// guest's query to 10.0.2.3 reaches it from the network thread, which may not open files, and
// its answer comes back from 10.0.2.3. When resolv.conf is rewritten meanwhile, queries still
// reach the server (libslirp cannot re-read the file there, and keeps what it had). Needs root.
TEST(SlirpBackend, DnsQueriesReachTheHostsResolver) {
  if (::unshare(CLONE_NEWNS | CLONE_NEWNET) != 0)
    GTEST_SKIP() << "needs root for namespaces: " << std::strerror(errno);
  ASSERT_EQ(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr), 0)
      << std::strerror(errno);
  loopback_up();
  char path[] = "/tmp/img2vm-resolv-XXXXXX";
  UniqueFd tmp(::mkstemp(path));
  ASSERT_TRUE(tmp);
  const std::string conf = "# test\nnameserver 127.0.0.1\n";
  ASSERT_EQ(::write(tmp.get(), conf.data(), conf.size()), ssize_t(conf.size()));
  if (::mount(path, "/etc/resolv.conf", nullptr, MS_BIND, nullptr) != 0) {
    ::unlink(path);
    GTEST_SKIP() << "cannot bind-mount over /etc/resolv.conf: " << std::strerror(errno);
  }
  ::unlink(path);

  UniqueFd server(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = loopback(53);
  ASSERT_EQ(::bind(server.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0)
      << std::strerror(errno);

  // libslirp keeps the name server it read last process-wide; the backend reads the file anew
  // when it is made, so no earlier test's host resolver is used.
  Stack s(config(true, false));
  ASSERT_TRUE(s.resolve_gateway());
  const Bytes query = {0xab, 0xcd, 1,   0,   0,   1,   0,   0, 0, 0, 0, 0, 7,
                       'e',  'x',  'a', 'm', 'p', 'l', 'e', 0, 0, 1, 0, 1};
  s.send_ip(udp(kGuestIp, 40005, kDnsIp, 53, query));
  ASSERT_TRUE(readable(server.get())) << "the query never reached the host's resolver";
  uint8_t buf[512];
  sockaddr_in from{};
  socklen_t len = sizeof from;
  ssize_t n =
      ::recvfrom(server.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
  ASSERT_EQ(Bytes(buf, buf + std::max<ssize_t>(n, 0)), query);
  Bytes answer = query;
  answer[2] |= 0x80;  // QR: a response
  ASSERT_EQ(::sendto(server.get(), answer.data(), answer.size(), 0,
                     reinterpret_cast<sockaddr*>(&from), len),
            ssize_t(answer.size()));
  auto r = s.sink.wait([](const Frame& f) { return f.proto == kUdp && f.dport == 40005; });
  ASSERT_TRUE(r) << "the answer never reached the guest";
  EXPECT_EQ(r->src_ip, kDnsIp);
  EXPECT_EQ(r->sport, 53);
  EXPECT_EQ(r->payload, answer);

  // resolv.conf changes (a longer file: libslirp sees another size). The network thread cannot
  // read it: one query may be lost, then the server known so far is used again; the VM lives.
  const std::string more = "# rewritten by a DHCP client\n";
  ASSERT_EQ(::pwrite(tmp.get(), more.data(), more.size(), off_t(conf.size())),
            ssize_t(more.size()));
  bool reached = false;
  for (uint16_t port = 40100; port < 40110 && !reached; ++port) {
    s.send_ip(udp(kGuestIp, port, kDnsIp, 53, query));
    pollfd p{server.get(), POLLIN, 0};
    reached = ::poll(&p, 1, 2000) == 1;
  }
  EXPECT_TRUE(reached) << "no query reached the resolver after resolv.conf changed";
  EXPECT_TRUE(s.resolve_gateway()) << "the event loop stopped";
}

TEST(SlirpBackend, PublishedPortCarriesATcpConnection) {
  uint16_t free_port = 0;
  { UniqueFd probe = host_socket(SOCK_STREAM, free_port); }
  Stack s(
      config(false, false, parse_port_forward("127.0.0.1:" + std::to_string(free_port) + ":80")));
  ASSERT_EQ(s.backend.published().size(), 1u);
  EXPECT_EQ(s.backend.published()[0].host_port, free_port);
  ASSERT_TRUE(s.resolve_gateway());  // slirp now knows the guest's MAC

  UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = loopback(free_port);
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

  auto data = s.sink.wait(
      [&](const Frame& f) { return f.proto == kTcp && f.sport == peer && !f.payload.empty(); });
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
  auto fin = s.sink.wait(
      [&](const Frame& f) { return f.proto == kTcp && f.sport == peer && (f.flags & kFin); });
  ASSERT_TRUE(fin) << "no FIN";
}

TEST(SlirpBackend, PublishedPortWithoutHostPortGetsAFreeOne) {
  Stack s(config(true, false, parse_port_forward("127.0.0.1::8080")));
  ASSERT_EQ(s.backend.published().size(), 1u);
  uint16_t port = s.backend.published()[0].host_port;
  EXPECT_NE(port, 0);
  ASSERT_TRUE(s.resolve_gateway());
  UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = loopback(port);
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
  Stack s(config(false, false,
                 parse_port_forward("127.0.0.1:" + std::to_string(free_port) + ":5353/udp")));
  ASSERT_TRUE(s.resolve_gateway());
  UniqueFd client(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = loopback(free_port);
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
  EXPECT_LT(::recv(other.get(), buf, sizeof buf, MSG_DONTWAIT), 0)
      << "the guest reached a host port it was not asked by";
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
    std::string spec =
        "127.0.0.1:" + std::to_string(port) + ":80" + (type == SOCK_DGRAM ? "/udp" : "");
    try {
      SlirpBackend b(config(true, false, parse_port_forward(spec)), 1500);
      ADD_FAILURE() << "publishing a port in use succeeded: " << spec;
    } catch (const Error& e) {
      std::string want = "host port " + std::to_string(port) +
                         (type == SOCK_DGRAM ? "/udp" : "/tcp") + " is already in use";
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
      EXPECT_NE(
          std::string(e.what()).find("cannot publish 127.0.0.1:" + std::to_string(port) + "->80"),
          std::string::npos)
          << e.what();
    }
  }
}

TEST(SlirpBackend, BadMtuIsRefused) { EXPECT_THROW(SlirpBackend(config(true, false), 100), Error); }
