// The tap backend without any VM, each test in a network namespace of its own (so the host's
// real network is never touched): the test plays the guest with raw Ethernet frames while the
// backend's event loop runs under the network thread's seccomp filter in kill mode, as in the
// runner, and looks at the host side (device, addresses, nftables rules) with the kernel's own
// view and Debian's nft. Needs root for the namespace; skipped otherwise, saying so.
#include "img2vm/vm/net_tap.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <ifaddrs.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <thread>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/vm/seccomp.hpp"
#include "net_frames.hpp"
#include "process.hpp"

using namespace img2vm;
using namespace img2vm::vm;
using namespace img2vm::testing;
using namespace img2vm::testing::frames;
using namespace std::chrono_literals;

namespace {

// A fresh network namespace for this test process (ctest runs each test in its own), with its
// loopback up. Returns why not when it cannot be had.
std::string enter_netns() {
  if (::unshare(CLONE_NEWNET) != 0)
    return std::string("cannot create a network namespace: ") + std::strerror(errno);
  if (::access("/dev/net/tun", R_OK | W_OK) != 0) return "no /dev/net/tun";
  auto r = run_command({"ip", "link", "set", "lo", "up"});
  if (r.exit_code != 0) return "ip link set lo up: " + r.describe();
  return {};
}

#define ENTER_NETNS_OR_SKIP()                              \
  do {                                                     \
    if (std::string why = enter_netns(); !why.empty())     \
      GTEST_SKIP() << why << " (the tap tests need root)"; \
  } while (0)

std::string nft_ruleset() { return run_command({"nft", "list", "ruleset"}).out; }

bool device_exists(const std::string& name) { return ::if_nametoindex(name.c_str()) != 0; }

// The IPv4 address and prefix of `dev` as the kernel has them.
std::string address_of(const std::string& dev) {
  ifaddrs* list = nullptr;
  std::string out;
  if (::getifaddrs(&list) != 0) return out;
  for (ifaddrs* a = list; a; a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET || dev != a->ifa_name) continue;
    char buf[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, buf, sizeof buf);
    uint32_t mask = ntohl(reinterpret_cast<sockaddr_in*>(a->ifa_netmask)->sin_addr.s_addr);
    out = std::string(buf) + "/" + std::to_string(__builtin_popcount(mask));
  }
  ::freeifaddrs(list);
  return out;
}

int mtu_of(const std::string& dev) {
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq r{};
  std::memcpy(r.ifr_name, dev.data(), std::min<size_t>(dev.size(), IFNAMSIZ - 1));
  return ::ioctl(s.get(), SIOCGIFMTU, &r) == 0 ? r.ifr_mtu : -1;
}

std::string first_line(const std::string& p) {
  std::ifstream in(p);
  std::string s;
  std::getline(in, s);
  return s;
}

TapNetConfig tap_config(bool outbound, std::vector<PortForward> fwds = {}, std::string name = {}) {
  TapNetConfig c;
  c.name = std::move(name);
  c.outbound = outbound;
  c.forwards = std::move(fwds);
  return c;
}

// The test as the guest, at the address the backend chose.
struct Stack : Guest<TapBackend> {
  explicit Stack(const TapNetConfig& cfg) : Guest(cfg, 1500) {
    guest = ip(backend.info().guest_ip);
    gateway = ip(backend.info().host_ip);
  }
};

// The message of the error a backend setup fails with ("" when it succeeds).
std::string setup_error(const TapNetConfig& cfg) {
  try {
    TapBackend b(cfg, 1500);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The setup fails with an error that says `needle`; `accepted` describes the failure if not.
void expect_setup_fails(const TapNetConfig& cfg, const std::string& needle, const char* accepted) {
  std::string err = setup_error(cfg);
  EXPECT_NE(err.find(needle), std::string::npos) << (err.empty() ? accepted : err);
}

// A packet socket that sees every frame leaving `dev`.
UniqueFd capture(const std::string& dev) {
  UniqueFd s(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, htons(ETH_P_ALL)));
  sockaddr_ll a{};
  a.sll_family = AF_PACKET;
  a.sll_protocol = htons(ETH_P_ALL);
  a.sll_ifindex = int(::if_nametoindex(dev.c_str()));
  EXPECT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  return s;
}

// The first UDP datagram to `dport` seen on `cap` within `wait`.
std::optional<Frame> captured_udp(int cap, uint16_t dport, std::chrono::milliseconds wait) {
  auto deadline = std::chrono::steady_clock::now() + wait;
  uint8_t buf[2048];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd p{cap, POLLIN, 0};
    if (::poll(&p, 1, int(left.count())) != 1) continue;
    ssize_t n = ::recv(cap, buf, sizeof buf, 0);
    if (n <= 0) continue;
    Frame f(Bytes(buf, buf + n));
    if (f.proto == kUdp && f.dport == dport) return f;
  }
}

// The device's MAC as the kernel has it.
Mac mac_of(const std::string& dev) {
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq r{};
  std::memcpy(r.ifr_name, dev.data(), std::min<size_t>(dev.size(), IFNAMSIZ - 1));
  Mac m{};
  if (::ioctl(s.get(), SIOCGIFHWADDR, &r) == 0) std::memcpy(m.data(), r.ifr_hwaddr.sa_data, 6);
  return m;
}

// A bound socket of `type` on `addr:0` (IPv4 or IPv6 text); its port in `port`.
UniqueFd bound_socket(int family, int type, const std::string& addr, uint16_t& port) {
  UniqueFd s(::socket(family, type | SOCK_CLOEXEC, 0));
  sockaddr_storage ss{};
  socklen_t len;
  if (family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    EXPECT_EQ(::inet_pton(AF_INET6, addr.c_str(), &a->sin6_addr), 1);
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    EXPECT_EQ(::inet_pton(AF_INET, addr.c_str(), &a->sin_addr), 1);
    len = sizeof *a;
  }
  EXPECT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&ss), len), 0)
      << addr << ": " << std::strerror(errno);
  if (type == SOCK_STREAM) {
    EXPECT_EQ(::listen(s.get(), 8), 0);
  }
  ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&ss), &len);
  port = ntohs(family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                  : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return s;
}

// What is queued on a socket now, without waiting: datagrams' payloads, or for a listener one
// entry per pending connection.
std::vector<std::string> pending(int fd, bool listener = false) {
  std::vector<std::string> out;
  for (;;) {
    if (listener) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 0) != 1) return out;
      UniqueFd c(::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC));
      if (!c) return out;
      out.push_back("connection");
      continue;
    }
    char buf[256];
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0) return out;
    out.emplace_back(buf, size_t(n));
  }
}

// The guest pings its gateway and waits for the answer. The host processes a guest's frames
// one by one in the write that hands each to the device (and queues what it answers in
// order), so once this answer is back every frame sent before it has had its effect.
void ping_gateway(Stack& s) {
  s.send_ip(ipv4(kIcmp, s.guest, s.gateway, icmp_echo(text("probe"))));
  ASSERT_TRUE(s.sink.wait([](const Frame& f) { return f.proto == kIcmp && f.icmp_type == 0; }))
      << "no echo reply";
}

// Waits (bounded) until no IPv6 address of `dev` is tentative: a host address is usable only
// after duplicate address detection (about a second after the device comes up).
void wait_for_ipv6_dad(const std::string& dev) {
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (run_command({"ip", "-6", "addr", "show", "dev", dev}).out.find("tentative") !=
             std::string::npos &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(50ms);
}

// An outside network behind the host: uplink0 (192.0.2.1/24) whose far end far0 is captured;
// 192.0.2.77 is a machine out there (its MAC known, so nothing waits for ARP).
void add_uplink() {
  ASSERT_EQ(run_command({"ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "far0"})
                .exit_code,
            0);
  ASSERT_EQ(run_command({"ip", "addr", "add", "192.0.2.1/24", "dev", "uplink0"}).exit_code, 0);
  ASSERT_EQ(run_command({"ip", "link", "set", "uplink0", "up"}).exit_code, 0);
  ASSERT_EQ(run_command({"ip", "link", "set", "far0", "up"}).exit_code, 0);
  ASSERT_EQ(run_command({"ip", "neigh", "add", "192.0.2.77", "lladdr", "02:00:00:00:00:77", "dev",
                         "uplink0"})
                .exit_code,
            0);
}

// The UDP datagrams seen on `cap` up to and including the first one to `until_dport` (bounded
// wait): their destination ports and source addresses.
std::vector<Frame> captured_until(int cap, uint16_t until_dport) {
  std::vector<Frame> seen;
  auto deadline = std::chrono::steady_clock::now() + 10s;
  uint8_t buf[2048];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return seen;
    pollfd p{cap, POLLIN, 0};
    if (::poll(&p, 1, int(left.count())) != 1) continue;
    ssize_t n = ::recv(cap, buf, sizeof buf, 0);
    if (n <= 0) continue;
    Frame f(Bytes(buf, buf + n));
    if (f.proto != kUdp) continue;
    seen.push_back(f);
    if (f.dport == until_dport) return seen;
  }
}

}  // namespace

TEST(TapBackend, ManagedDeviceIsConfiguredAndLeavesNothingBehind) {
  ENTER_NETNS_OR_SKIP();
  auto b =
      std::make_unique<TapBackend>(tap_config(true, parse_port_forward("127.0.0.1:8080:80")), 1400);
  const TapNetInfo i = b->info();
  EXPECT_EQ(i.device, "img2vm0");
  EXPECT_TRUE(i.managed);
  EXPECT_EQ(i.host_ip, "10.200.0.1");
  EXPECT_EQ(i.guest_ip, "10.200.0.2");
  EXPECT_EQ(i.prefix_length, 30u);
  EXPECT_EQ(i.table, "ip img2vm_img2vm0");
  EXPECT_TRUE(device_exists(i.device));
  EXPECT_EQ(address_of(i.device), "10.200.0.1/30");
  EXPECT_EQ(mtu_of(i.device), 1400);
  EXPECT_EQ(first_line("/proc/sys/net/ipv4/ip_forward"), "1");
  EXPECT_EQ(first_line("/proc/sys/net/ipv4/conf/" + i.device + "/route_localnet"), "1")
      << "published on 127.0.0.1";
  EXPECT_EQ(first_line("/proc/sys/net/ipv4/conf/" + i.device + "/rp_filter"), "1");
  EXPECT_EQ(first_line("/proc/sys/net/ipv6/conf/" + i.device + "/disable_ipv6"), "1");
  EXPECT_EQ(first_line("/proc/sys/net/ipv6/conf/" + i.device + "/accept_ra"), "0");
  std::string rules = nft_ruleset();
  EXPECT_NE(rules.find("table ip img2vm_img2vm0"), std::string::npos) << rules;
  EXPECT_NE(rules.find("table netdev img2vm_img2vm0"), std::string::npos) << rules;
  EXPECT_NE(rules.find("ip daddr 127.0.0.1 tcp dport 8080 dnat to 10.200.0.2:80"),
            std::string::npos)
      << rules;
  EXPECT_NE(rules.find("ip saddr 10.200.0.2 oifname != \"img2vm0\" masquerade"), std::string::npos)
      << rules;
  ASSERT_EQ(b->published().size(), 1u);
  EXPECT_EQ(b->published()[0].host_port, 8080);

  // A second VM gets the next device and subnet; the first one ending leaves it working.
  auto b2 = std::make_unique<TapBackend>(tap_config(false), 1500);
  EXPECT_EQ(b2->info().device, "img2vm1");
  EXPECT_EQ(first_line("/proc/sys/net/ipv4/conf/img2vm1/route_localnet"), "0")
      << "no port published on the loopback";
  EXPECT_EQ(b2->info().guest_ip, "10.200.0.6");
  EXPECT_EQ(address_of("img2vm1"), "10.200.0.5/30");
  b.reset();
  EXPECT_FALSE(device_exists(i.device)) << i.device << " is still there";
  EXPECT_EQ(first_line("/proc/sys/net/ipv4/ip_forward"), "1")
      << "forwarding switched off under a running VM";
  rules = nft_ruleset();
  EXPECT_EQ(rules.find("img2vm_img2vm0"), std::string::npos) << rules;
  EXPECT_NE(rules.find("img2vm_img2vm1"), std::string::npos) << rules;
  b2.reset();

  EXPECT_FALSE(device_exists("img2vm1"));
  rules = nft_ruleset();
  EXPECT_EQ(rules.find("img2vm"), std::string::npos) << "rules left behind:\n" << rules;
  EXPECT_EQ(first_line("/proc/sys/net/ipv4/ip_forward"), "0") << "ip_forward was off before";
}

TEST(TapBackend, SubnetsInUseOnTheHostAreSkipped) {
  ENTER_NETNS_OR_SKIP();
  ASSERT_EQ(run_command({"ip", "link", "add", "busy0", "type", "bridge"}).exit_code, 0);
  ASSERT_EQ(run_command({"ip", "addr", "add", "10.200.0.1/29", "dev", "busy0"}).exit_code, 0);
  TapBackend b(tap_config(true), 1500);
  EXPECT_EQ(b.info().host_ip, "10.200.0.9") << "10.200.0.0/29 is taken by busy0";
}

TEST(TapBackend, GuestReachesTheGatewayButNoHostService) {
  ENTER_NETNS_OR_SKIP();
  Stack s(tap_config(true));
  ASSERT_TRUE(s.resolve_gateway()) << "no ARP reply from the host end";

  s.send_ip(ipv4(kIcmp, s.guest, s.gateway, icmp_echo(text("ping payload"))));
  auto pong = s.sink.wait([](const Frame& f) { return f.proto == kIcmp; });
  ASSERT_TRUE(pong) << "no echo reply from the gateway";
  EXPECT_EQ(pong->icmp_type, 0);
  EXPECT_EQ(pong->src_ip, s.gateway);
  EXPECT_EQ(pong->dst_ip, s.guest);
  EXPECT_EQ(pong->payload, text("ping payload"));

  // A UDP service on the host (on every address) hears nothing from the guest; the same
  // datagram from the host's own loopback arrives (the service works).
  UniqueFd svc(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  ASSERT_EQ(::bind(svc.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  ::getsockname(svc.get(), reinterpret_cast<sockaddr*>(&a), &len);
  const uint16_t port = ntohs(a.sin_port);
  s.send_ip(udp(s.guest, 5555, s.gateway, port, text("from-guest")));
  pollfd p{svc.get(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 1500), 0) << "the guest reached a host service";
  UniqueFd local(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::sendto(local.get(), "from-host", 9, 0, reinterpret_cast<sockaddr*>(&a), sizeof a), 9);
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  char buf[32];
  ASSERT_EQ(::recv(svc.get(), buf, sizeof buf, 0), 9);
  EXPECT_EQ(std::string(buf, 9), "from-host");
}

// Outbound traffic is forwarded and masqueraded behind the host's address on the way out
// (seen arriving at the far end of a veth "uplink"); with outbound off it never leaves; another
// VM's subnet is never reached.
TEST(TapBackend, OutboundIsMasqueradedOnlyWhenAllowed) {
  ENTER_NETNS_OR_SKIP();
  ASSERT_EQ(run_command({"ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "far0"})
                .exit_code,
            0);
  ASSERT_EQ(run_command({"ip", "addr", "add", "192.0.2.1/24", "dev", "uplink0"}).exit_code, 0);
  ASSERT_EQ(run_command({"ip", "link", "set", "uplink0", "up"}).exit_code, 0);
  ASSERT_EQ(run_command({"ip", "link", "set", "far0", "up"}).exit_code, 0);
  ASSERT_EQ(run_command({"ip", "neigh", "add", "192.0.2.77", "lladdr", "02:00:00:00:00:77", "dev",
                         "uplink0"})
                .exit_code,
            0);
  UniqueFd cap = capture("far0");
  const uint32_t outside = ip("192.0.2.77");

  Stack open(tap_config(true));
  Stack closed(tap_config(false));
  ASSERT_TRUE(open.resolve_gateway());
  ASSERT_TRUE(closed.resolve_gateway());

  open.send_ip(udp(open.guest, 4000, outside, 9001, text("out")));
  auto seen = captured_udp(cap.get(), 9001, 5s);
  ASSERT_TRUE(seen) << "the datagram never left through uplink0";
  EXPECT_EQ(seen->src_ip, ip("192.0.2.1")) << "not masqueraded";
  EXPECT_EQ(seen->dst_ip, outside);
  EXPECT_EQ(seen->payload, text("out"));

  closed.send_ip(udp(closed.guest, 4000, outside, 9002, text("out")));
  EXPECT_FALSE(captured_udp(cap.get(), 9002, 1500ms)) << "outbound=off let the guest out";

  // VM to VM: nothing arrives (the host would have to ARP for the other guest first).
  open.send_ip(udp(open.guest, 4000, closed.guest, 9003, text("neighbour")));
  auto any = closed.sink.wait([](const Frame& f) {
    return (f.proto == kUdp && f.dport == 9003) || (f.type == kArp && f.arp_op == 1);
  });
  EXPECT_FALSE(any) << "a frame from the other VM reached this one";
}

// A connection to a published port on the host's loopback and on the host's address reaches
// the guest's port, carries data both ways, and the reserved port cannot be taken meanwhile.
TEST(TapBackend, PublishedPortsCarryTcpConnectionsWithOffloads) {
  ENTER_NETNS_OR_SKIP();
  int p1 = free_loopback_port();
  Stack s(tap_config(false, parse_port_forward("127.0.0.1:" + std::to_string(p1) + ":80")));
  ASSERT_EQ(s.backend.published().size(), 1u);
  EXPECT_EQ(s.backend.published()[0].host_port, p1);
  s.backend.set_guest_offloads(true, true, true);

  // The port is held: binding it again fails.
  UniqueFd other(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = loopback(uint16_t(p1));
  EXPECT_NE(::bind(other.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);

  UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  ASSERT_NE(::connect(client.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(errno, EINPROGRESS);
  ASSERT_TRUE(s.answer_arp()) << "the host never asked for the guest's address";
  auto syn = s.sink.wait([](const Frame& f) { return f.proto == kTcp && (f.flags & kSyn); });
  ASSERT_TRUE(syn) << "no SYN toward the guest";
  EXPECT_EQ(syn->dst_ip, s.guest);
  EXPECT_EQ(syn->dport, 80);
  EXPECT_EQ(syn->src_ip, s.gateway) << "loopback clients appear to come from the gateway";
  s.gateway_mac = syn->src;
  const uint16_t peer = syn->sport;
  const uint32_t iss = 7000;
  uint32_t their = syn->seq + 1;
  s.send_ip(tcp(s.guest, 80, s.gateway, peer, iss, their, kSyn | kAck));

  pollfd p{client.get(), POLLOUT, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1) << "the connection never completed";
  ASSERT_EQ(::write(client.get(), "hello", 5), 5);
  auto data = s.sink.wait(
      [&](const Frame& f) { return f.proto == kTcp && f.sport == peer && !f.payload.empty(); });
  ASSERT_TRUE(data) << "the host's bytes never reached the guest";
  EXPECT_EQ(data->payload, text("hello"));
  their += 5;
  s.send_ip(tcp(s.guest, 80, s.gateway, peer, iss + 1, their, kAck | kPsh, text("world")));
  p = {client.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1);
  char buf[16];
  ASSERT_EQ(::read(client.get(), buf, sizeof buf), 5);
  EXPECT_EQ(std::string(buf, 5), "world");

  // Offloads (taken by the "driver" below, before connecting, as a guest's driver takes them at
  // boot). Guest to host: one 4000-byte segment with a partial checksum (the pseudo header's
  // sum in the field), which the host kernel finishes and cuts into 1000-byte pieces.
  Bytes big(4000);
  for (size_t i = 0; i < big.size(); ++i) big[i] = uint8_t('a' + i % 26);
  Bytes seg = ether(s.gateway_mac, kGuestMac, kIpv4,
                    tcp(s.guest, 80, s.gateway, peer, iss + 6, their, kAck | kPsh, big));
  Bytes pseudo;
  put32(pseudo, s.guest);
  put32(pseudo, s.gateway);
  put16(pseudo, kTcp);
  put16(pseudo, uint16_t(20 + big.size()));
  const uint16_t partial = uint16_t(~fold(sum_words(pseudo.data(), pseudo.size())));
  seg[14 + 20 + 16] = uint8_t(partial >> 8);
  seg[14 + 20 + 17] = uint8_t(partial);
  // virtio_net_hdr: NEEDS_CSUM, GSO TCPv4, hdr_len 54, gso_size 1000, csum_start 34, csum_offset 16
  s.send(seg,
         {VirtioNet::kHdrFNeedsCsum, VirtioNet::kGsoTcpV4, 54, 0, 0xe8, 0x03, 34, 0, 16, 0, 0, 0});
  std::string got;
  while (got.size() < big.size()) {
    p = {client.get(), POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 10000), 1) << "got " << got.size() << " of the segment's bytes";
    char chunk[8192];
    ssize_t n = ::read(client.get(), chunk, sizeof chunk);
    ASSERT_GT(n, 0);
    got.append(chunk, size_t(n));
  }
  EXPECT_EQ(got, std::string(big.begin(), big.end()));

  // Host to guest: a large write arrives in GSO frames of several segments each. (Their size
  // depends on the host's pacing: at least two segments, of 536 bytes as the guest's SYN|ACK
  // gave no MSS, so not necessarily more than the MTU.)
  const std::string blob(20000, 'z');
  ASSERT_GT(::write(client.get(), blob.data(), blob.size()), 0);
  auto gso = s.sink.wait([&](const Frame& f) {
    const size_t gso_size = f.vnet.size() >= 6 ? size_t(f.vnet[4] | f.vnet[5] << 8) : 0;
    return f.proto == kTcp && f.sport == peer && gso_size > 0 && f.payload.size() > gso_size;
  });
  ASSERT_TRUE(gso) << "no GSO frame of several segments reached the guest";
  EXPECT_EQ(gso->vnet.at(1), VirtioNet::kGsoTcpV4);
  EXPECT_EQ(gso->vnet.at(0) & VirtioNet::kHdrFNeedsCsum, VirtioNet::kHdrFNeedsCsum);
}

TEST(TapBackend, PublishedUdpPortAndAFreeHostPort) {
  ENTER_NETNS_OR_SKIP();
  Stack s(tap_config(false, parse_port_forward("127.0.0.1::53/udp")));
  ASSERT_EQ(s.backend.published().size(), 1u);
  const uint16_t port = s.backend.published()[0].host_port;
  EXPECT_NE(port, 0);
  UniqueFd c(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = loopback(port);
  ASSERT_EQ(::sendto(c.get(), "query", 5, 0, reinterpret_cast<sockaddr*>(&a), sizeof a), 5);
  ASSERT_TRUE(s.answer_arp());
  auto q = s.sink.wait([](const Frame& f) { return f.proto == kUdp; });
  ASSERT_TRUE(q) << "the datagram never reached the guest";
  EXPECT_EQ(q->dst_ip, s.guest);
  EXPECT_EQ(q->dport, 53);
  EXPECT_EQ(q->payload, text("query"));
  s.gateway_mac = q->src;
  s.send_ip(udp(s.guest, 53, q->src_ip, q->sport, text("answer")));
  pollfd p{c.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1) << "the reply never came back";
  char buf[16];
  ASSERT_EQ(::recv(c.get(), buf, sizeof buf, 0), 6);
  EXPECT_EQ(std::string(buf, 6), "answer");
}

TEST(TapBackend, FailuresAreClearAndUndoEverything) {
  ENTER_NETNS_OR_SKIP();
  int port = free_loopback_port();
  UniqueFd holder(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = loopback(uint16_t(port));
  ASSERT_EQ(::bind(holder.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  expect_setup_fails(
      tap_config(true, parse_port_forward("127.0.0.1:" + std::to_string(port) + ":80")),
      "host port " + std::to_string(port) + "/tcp is already in use", "a port in use was accepted");
  EXPECT_FALSE(device_exists("img2vm0")) << "the device of the failed setup is still there";
  EXPECT_EQ(nft_ruleset().find("img2vm"), std::string::npos) << nft_ruleset();
  EXPECT_EQ(first_line("/proc/sys/net/ipv4/ip_forward"), "0");

  expect_setup_fails(tap_config(true, parse_port_forward("[::1]:8080:80")), "IPv4 addresses only",
                     "an IPv6 host address was accepted");
  expect_setup_fails(tap_config(true, {}, "this-name-is-too-long"), "longer than 15",
                     "a long name was accepted");
  for (const char* name : {"vm\"tap", "vm;tap", "vm{tap}", "9tap", "_tap", "vm@tap"}) {
    expect_setup_fails(tap_config(true, {}, name), "use a letter, then letters", name);
    EXPECT_FALSE(device_exists(name)) << name;
  }
  {  // a name of the user's choosing, dashes and dots included, is made and ruled as it is
    Stack s(tap_config(true, {}, "vm-tap.1"));
    EXPECT_TRUE(s.backend.info().managed);
    EXPECT_EQ(s.backend.info().device, "vm-tap.1");
    EXPECT_NE(nft_ruleset().find("table ip img2vm_vm-tap.1"), std::string::npos) << nft_ruleset();
    ASSERT_TRUE(s.resolve_gateway());
  }
  EXPECT_FALSE(device_exists("vm-tap.1"));
  ASSERT_EQ(run_command({"ip", "link", "add", "notatap", "type", "bridge"}).exit_code, 0);
  expect_setup_fails(tap_config(true, {}, "notatap"), "not a tap device",
                     "a bridge was taken for a tap");
}

// A device made beforehand (a persistent tap, as an administrator sets up for a user): the
// backend attaches, derives the guest's address from the device's, and installs nothing.
TEST(TapBackend, ExistingDeviceIsUsedAsItIs) {
  ENTER_NETNS_OR_SKIP();
  ASSERT_EQ(run_command({"ip", "tuntap", "add", "dev", "vmtap0", "mode", "tap"}).exit_code, 0);
  expect_setup_fails(tap_config(true, {}, "vmtap0"), "has no IPv4 address",
                     "a device without an address was accepted");
  ASSERT_EQ(run_command({"ip", "addr", "add", "172.31.5.1/24", "dev", "vmtap0"}).exit_code, 0);
  ASSERT_EQ(run_command({"ip", "link", "set", "vmtap0", "up"}).exit_code, 0);
  expect_setup_fails(tap_config(true, parse_port_forward("8080:80"), "vmtap0"),
                     "publish ports with --network tap",
                     "ports were published on a device img2vm does not manage");
  {
    Stack s(tap_config(true, {}, "vmtap0"));
    EXPECT_FALSE(s.backend.info().managed);
    EXPECT_EQ(s.backend.info().host_ip, "172.31.5.1");
    EXPECT_EQ(s.backend.info().guest_ip, "172.31.5.2");
    EXPECT_EQ(s.backend.info().prefix_length, 24u);
    EXPECT_EQ(nft_ruleset().find("img2vm"), std::string::npos)
        << "rules installed for a foreign device";
    ASSERT_TRUE(s.resolve_gateway()) << "frames do not flow through the existing device";
  }
  EXPECT_TRUE(device_exists("vmtap0")) << "the administrator's device was removed";
  EXPECT_EQ(address_of("vmtap0"), "172.31.5.1/24");
}

// A runner killed with its rules in place: the next managed backend (or the explicit call)
// removes the table whose device is gone, and keeps the others.
TEST(TapBackend, RulesLeftByAKilledRunnerAreRemoved) {
  ENTER_NETNS_OR_SKIP();
  ASSERT_EQ(run_command({"nft", "add", "table", "ip", "img2vm_img2vm7"}).exit_code, 0);
  ASSERT_EQ(run_command({"nft", "add", "table", "netdev", "img2vm_img2vm7"}).exit_code, 0);
  {
    TapBackend live(tap_config(true), 1500);
    ASSERT_EQ(run_command({"nft", "add", "table", "ip", "img2vm_img2vm9"}).exit_code, 0);
    ASSERT_EQ(run_command({"nft", "add", "table", "netdev", "img2vm_img2vm9"}).exit_code, 0);
    auto removed = remove_stale_tap_rules();
    EXPECT_EQ(removed, std::vector<std::string>{"img2vm_img2vm9"})
        << "img2vm7 should have gone with the setup";
    std::string rules = nft_ruleset();
    EXPECT_NE(rules.find("table ip img2vm_" + live.info().device), std::string::npos) << rules;
    EXPECT_NE(rules.find("table netdev img2vm_" + live.info().device), std::string::npos) << rules;
    EXPECT_EQ(rules.find("img2vm_img2vm7"), std::string::npos) << rules;
  }
  EXPECT_EQ(nft_ruleset().find("img2vm"), std::string::npos) << nft_ruleset();
}

// IPv6 goes nowhere: the host side of the device has no IPv6 address, and neither a datagram to
// the address it would have (its link-local one, derived from its MAC), to [::1], to an
// IPv4-mapped loopback address or to all nodes reaches a host socket on [::]; a router
// advertisement from the guest gives the host no route and no address.
TEST(TapBackend, GuestIpv6ReachesNothingOnTheHost) {
  ENTER_NETNS_OR_SKIP();
  Stack s(tap_config(true));
  ASSERT_TRUE(s.resolve_gateway());
  const std::string dev = s.backend.info().device;
  uint16_t port = 0;
  UniqueFd svc = bound_socket(AF_INET6, SOCK_DGRAM, "::", port);
  wait_for_ipv6_dad(dev);  // were there an address, it would now take datagrams

  const Ip6 me = link_local(kGuestMac), host = link_local(mac_of(dev));
  const Mac all_nodes = {0x33, 0x33, 0, 0, 0, 1};
  s.send(ether(s.gateway_mac, kGuestMac, kIpv6, udp6(me, 5555, host, port, text("to-link-local"))));
  s.send(ether(s.gateway_mac, kGuestMac, kIpv6,
               udp6(me, 5555, ip6("::1"), port, text("to-loopback"))));
  s.send(ether(s.gateway_mac, kGuestMac, kIpv6,
               udp6(me, 5555, ip6("::ffff:127.0.0.1"), port, text("to-mapped"))));
  s.send(ether(all_nodes, kGuestMac, kIpv6,
               udp6(me, 5555, ip6("ff02::1"), port, text("to-all-nodes"))));
  s.send(
      ether(all_nodes, kGuestMac, kIpv6, router_advertisement(me, kGuestMac, ip6("2001:db8:1::"))));
  ping_gateway(s);

  EXPECT_EQ(pending(svc.get()), std::vector<std::string>{})
      << "IPv6 from the guest reached a host socket on [::]";
  std::string routes = run_command({"ip", "-6", "route", "show", "dev", dev}).out;
  std::string addrs = run_command({"ip", "-6", "addr", "show", "dev", dev}).out;
  EXPECT_EQ(routes.find("default"), std::string::npos) << "the host took the guest as its router:\n"
                                                       << routes;
  EXPECT_EQ(routes.find("2001:db8:1"), std::string::npos) << routes;
  EXPECT_EQ(addrs.find("inet6"), std::string::npos) << "the device has IPv6 addresses:\n" << addrs;
}

// Only the guest's own addresses leave it. A datagram with another source address neither
// reaches a host socket (here one with a conversation under way, whose reply it forges) nor is
// forwarded to the outside; nor is one from the guest's address but another MAC. The guest's own
// datagram, sent after them, leaves masqueraded.
TEST(TapBackend, SpoofedSourcesNeitherReachTheHostNorLeave) {
  ENTER_NETNS_OR_SKIP();
  add_uplink();
  UniqueFd cap = capture("far0");
  Stack s(tap_config(true));
  ASSERT_TRUE(s.resolve_gateway());
  const uint32_t outside = ip("192.0.2.77");

  // The host asks 192.0.2.77:53 something; conntrack now expects its answer.
  UniqueFd asker(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(5300);
  a.sin_addr.s_addr = htonl(ip("192.0.2.1"));
  ASSERT_EQ(::bind(asker.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0)
      << std::strerror(errno);
  a.sin_port = htons(53);
  a.sin_addr.s_addr = htonl(outside);
  ASSERT_EQ(::connect(asker.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::send(asker.get(), "query", 5, 0), 5);

  s.send_ip(udp(outside, 53, ip("192.0.2.1"), 5300, text("forged answer")));
  for (const char* src : {"10.200.0.6", "192.0.2.99", "10.200.0.1", "127.0.0.1"})
    s.send_ip(udp(ip(src), 4000, outside, 9001, text(src)));
  const Mac other = {0x52, 0x54, 0x00, 0x12, 0x34, 0x57};
  s.send(ether(s.gateway_mac, other, kIpv4, udp(s.guest, 4000, outside, 9004, text("other MAC"))));
  s.send_ip(udp(s.guest, 4000, outside, 9002, text("probe")));

  std::vector<Frame> seen = captured_until(cap.get(), 9002);
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back().dport, 9002) << "the guest's own datagram never left";
  EXPECT_EQ(seen.back().src_ip, ip("192.0.2.1")) << "not masqueraded";
  for (const Frame& f : seen) {
    EXPECT_NE(f.dport, 9001) << "a spoofed source was forwarded: "
                             << std::string(f.payload.begin(), f.payload.end());
    EXPECT_NE(f.dport, 9004) << "a frame from another MAC was forwarded";
  }
  ping_gateway(s);
  EXPECT_EQ(pending(asker.get()), std::vector<std::string>{})
      << "a forged answer reached the host's socket";
}

// The device routes loopback addresses while a port is published on every address (for
// connections from the host's loopback), yet the guest's own datagrams and connections to
// 127.0.0.0/8 (and 0.0.0.0) reach no host socket, and no SYN|ACK comes back.
TEST(TapBackend, GuestFramesToTheHostsLoopbackAreDropped) {
  ENTER_NETNS_OR_SKIP();
  Stack s(tap_config(true, parse_port_forward("0.0.0.0::80")));
  ASSERT_TRUE(s.resolve_gateway());
  EXPECT_EQ(first_line("/proc/sys/net/ipv4/conf/" + s.backend.info().device + "/route_localnet"),
            "1");
  uint16_t uport = 0, tport = 0;
  UniqueFd u = bound_socket(AF_INET, SOCK_DGRAM, "0.0.0.0", uport);
  UniqueFd t = bound_socket(AF_INET, SOCK_STREAM, "0.0.0.0", tport);
  for (const char* dst : {"127.0.0.1", "127.0.0.2", "0.0.0.0"}) {
    s.send_ip(udp(s.guest, 5555, ip(dst), uport, text(dst)));
    s.send_ip(tcp(s.guest, 5556, ip(dst), tport, 1000, 0, kSyn));
  }
  ping_gateway(s);
  EXPECT_EQ(pending(u.get()), std::vector<std::string>{})
      << "a datagram reached the host's loopback";
  EXPECT_EQ(pending(t.get(), true), std::vector<std::string>{});
  std::lock_guard lk(s.sink.mu);
  for (const Bytes& raw : s.sink.frames) {
    Frame f(raw, s.sink.header);
    EXPECT_FALSE(f.proto == kTcp && f.sport == tport) << "the host answered a SYN to its loopback";
  }
}

// What img2vm-vmm gets for --network tap: the device's descriptor, in a process that is no
// longer root and has no capabilities. A child process gives up root, then carries the guest's
// frames over a TapDevice on that descriptor (its event loop under the network thread's filter):
// ARP and a ping of the gateway work; the host side (addresses, rules) stays with the parent.
// Anything that is not such a tap device is refused with a clear error.
TEST(TapBackend, TheDevicesDescriptorWorksWithoutPrivileges) {
  ENTER_NETNS_OR_SKIP();
  TapBackend b(tap_config(true), 1500);
  const TapNetInfo info = b.info();
  const int fd = b.device_fd();
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
        ::setresuid(65534, 65534, 65534) != 0)
      ::_exit(10);
    if (::geteuid() == 0) ::_exit(11);
    try {
      Guest<TapDevice> g(UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 3)));
      if (g.backend.name() != info.device) ::_exit(12);
      g.guest = ip(info.guest_ip);
      g.gateway = ip(info.host_ip);
      if (!g.resolve_gateway()) ::_exit(13);
      g.send_ip(ipv4(kIcmp, g.guest, g.gateway, icmp_echo(text("unprivileged"))));
      auto pong = g.sink.wait([](const Frame& f) { return f.proto == kIcmp && f.icmp_type == 0; });
      ::_exit(pong && pong->payload == text("unprivileged") ? 0 : 14);
    } catch (const Error&) {
      ::_exit(15);
    }
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "10: could not give up root, 12: wrong device, 13: no ARP reply, 14: no ping "
         "reply, 15: the device was refused";

  try {
    TapDevice not_tap(UniqueFd(::open("/dev/null", O_RDWR | O_CLOEXEC)));
    ADD_FAILURE() << "/dev/null was taken for a tap device";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not an attached tap device"), std::string::npos)
        << e.what();
  }
}
