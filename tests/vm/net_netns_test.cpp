// A VM's NIC in a container engine's network namespace (net_netns.hpp), without any VM: the
// test builds what podman or containerd would (a namespace holding a veth with an address, a
// MAC, an MTU and a default route; the veth's peer in a second namespace standing for the
// engine's bridge and the containers behind it), hands the first to NetnsTap, looks at the
// result with iproute2's own view, and plays the VMM on the tap's descriptor: frames written
// there reach the peer's sockets and the peer's traffic comes out of it. Every namespace is
// the test's own (harness/netns.hpp); needs root, skipped otherwise.
#include "img2vm/vm/net_netns.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "net_frames.hpp"
#include "netns.hpp"
#include "process.hpp"

using namespace img2vm;
using namespace img2vm::vm;
using namespace img2vm::testing;
using namespace img2vm::testing::frames;
using namespace std::chrono_literals;

namespace {

constexpr const char* kVmNs = "/run/netns/vm";
constexpr Mac kVethMac = {0x02, 0x42, 0x0a, 0x63, 0x00, 0x02};
constexpr Mac kPeerMac = {0x02, 0x42, 0x0a, 0x63, 0x00, 0x01};
constexpr size_t kVnetHeader = 12;  // what img2vm-vmm's TapDevice sets (TUNSETVNETHDRSZ)

std::string out_of(const std::vector<std::string>& argv) {
  CommandResult r = run_command(argv);
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  return r.out;
}
std::string ip_out(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"ip"};
  argv.insert(argv.end(), args.begin(), args.end());
  return out_of(argv);
}
bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

namespace img2vm::vm {
void PrintTo(const NetnsAddress& a, std::ostream* os) {
  *os << a.address << "/" << a.prefix_length;
}
void PrintTo(const NetnsRoute& r, std::ostream* os) {
  *os << r.destination << "/" << r.prefix_length << (r.gateway.empty() ? "" : " via ") << r.gateway;
}
}  // namespace img2vm::vm

namespace {

template <class T>
std::vector<T> sorted(std::vector<T> v) {
  std::sort(v.begin(), v.end(), [](const T& a, const T& b) {
    std::ostringstream x, y;
    PrintTo(a, &x);
    PrintTo(b, &y);
    return x.str() < y.str();
  });
  return v;
}

// The error NetnsTap fails with on `path` ("" when it succeeds).
std::string setup_error(const std::string& path) {
  try {
    NetnsTap t(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class Netns : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string why = enter_private_netns_dir(); !why.empty())
      GTEST_SKIP() << why << " (the netns tests need root for their own namespaces)";
  }
};

// What the guest's side reads: frames from the tap's descriptor, each after its virtio-net header.
std::optional<Frame> next_frame(int fd, const std::function<bool(const Frame&)>& want,
                                std::chrono::milliseconds within) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, int(left.count())) <= 0) continue;
    Bytes b(65536 + kVnetHeader);
    ssize_t n = ::read(fd, b.data(), b.size());
    if (n <= 0) continue;
    b.resize(size_t(n));
    Frame f(std::move(b), kVnetHeader);
    if (want(f)) return f;
  }
}

void write_frame(int fd, const Bytes& frame) {
  Bytes b(kVnetHeader, 0);  // no offloads: flags 0, GSO none
  b.insert(b.end(), frame.begin(), frame.end());
  ASSERT_EQ(::write(fd, b.data(), b.size()), ssize_t(b.size())) << std::strerror(errno);
}

TEST_F(Netns, TakesTheInterfacesPlaceAndRestoresItOnceTheVmHasEnded) {
  // harness/netns.hpp: vm (eth0: 10.99.0.2/24, kVethMac, MTU 1400), peer (peer0: 10.99.0.1/24).
  make_engine_netns();
  std::optional<NetnsTap> t;
  t.emplace(kVmNs);
  const NetnsLink& i = t->info();
  EXPECT_EQ(i.interface, "eth0");
  EXPECT_EQ(i.address, "10.99.0.2");
  EXPECT_EQ(i.prefix_length, 24u);
  EXPECT_EQ(i.gateway, "10.99.0.1");
  EXPECT_EQ(i.mtu, 1400u);
  EXPECT_EQ(i.mac, kVethMac);
  EXPECT_EQ(i.tap, "img2vm-tap0");
  EXPECT_GE(t->device_fd(), 0);
  EXPECT_GT(i.tap_index, 0);
  EXPECT_EQ(i.routes, (std::vector<NetnsRoute>{{"192.168.77.0", 24, "10.99.0.1"}}));
  EXPECT_TRUE(i.addresses6.empty());
  EXPECT_TRUE(i.not_carried.empty());

  // The tap: up, the veth's MTU, no IPv6; the veth: no IPv4 left; frames redirected both ways.
  std::string tap = ip_out({"-n", "vm", "-d", "link", "show", "img2vm-tap0"});
  EXPECT_TRUE(contains(tap, "mtu 1400")) << tap;
  EXPECT_TRUE(contains(tap, "<BROADCAST,MULTICAST,UP")) << tap;
  EXPECT_TRUE(contains(tap, "tun type tap")) << tap;
  EXPECT_EQ(out_of({"ip", "netns", "exec", "vm", "cat",
                    "/proc/sys/net/ipv6/conf/img2vm-tap0/disable_ipv6"}),
            "1\n");
  EXPECT_EQ(ip_out({"-n", "vm", "-4", "-o", "addr", "show", "dev", "eth0"}), "");
  EXPECT_EQ(ip_out({"-n", "vm", "-4", "route", "show"}), "");
  std::string to_tap = out_of({"tc", "-n", "vm", "filter", "show", "dev", "eth0", "ingress"});
  EXPECT_TRUE(contains(to_tap, "u32")) << to_tap;
  EXPECT_TRUE(contains(to_tap, "mirred (Egress Redirect to device img2vm-tap0) stolen")) << to_tap;
  std::string to_veth =
      out_of({"tc", "-n", "vm", "filter", "show", "dev", "img2vm-tap0", "ingress"});
  EXPECT_TRUE(contains(to_veth, "mirred (Egress Redirect to device eth0) stolen")) << to_veth;

  // A second VM in the same namespace is refused, naming the first one's tap; netns_has_vm
  // tells beforehand.
  EXPECT_TRUE(netns_has_vm(kVmNs));
  std::string again = setup_error(kVmNs);
  EXPECT_TRUE(contains(again, "already has img2vm's tap device img2vm-tap0")) << again;

  // Destroyed when no VM has the tap any more, a NetnsTap restores the namespace as it found it.
  t.reset();
  EXPECT_FALSE(contains(ip_out({"-n", "vm", "link", "show"}), "img2vm-tap0"));
  EXPECT_FALSE(netns_has_vm(kVmNs));
  EXPECT_FALSE(netns_has_vm("/run/netns/none"));
  EXPECT_TRUE(contains(ip_out({"-n", "vm", "-4", "-o", "addr", "show", "dev", "eth0"}),
                       "inet 10.99.0.2/24"));
  std::string routes = ip_out({"-n", "vm", "-4", "route", "show"});
  EXPECT_TRUE(contains(routes, "default via 10.99.0.1 dev eth0")) << routes;
  EXPECT_TRUE(contains(routes, "192.168.77.0/24 via 10.99.0.1 dev eth0")) << routes;
  EXPECT_TRUE(contains(routes, "10.99.0.0/24 dev eth0 proto kernel")) << routes;
  EXPECT_FALSE(contains(out_of({"tc", "-n", "vm", "qdisc", "show", "dev", "eth0"}), "ingress"));

  // Ready for the next VM, which (standing in: a duplicate of the descriptor, as a detached VM's
  // monitor and VMM hold it) outlives the NetnsTap: nothing is undone under it.
  t.emplace(kVmNs);
  EXPECT_EQ(t->info().gateway, "10.99.0.1");
  UniqueFd vmm(::fcntl(t->device_fd(), F_DUPFD_CLOEXEC, 0));
  ASSERT_TRUE(vmm);
  const std::string state = t->restore_state();
  t.reset();
  EXPECT_TRUE(contains(ip_out({"-n", "vm", "link", "show"}), "img2vm-tap0"));
  EXPECT_EQ(ip_out({"-n", "vm", "-4", "-o", "addr", "show", "dev", "eth0"}), "");
  EXPECT_TRUE(contains(out_of({"tc", "-n", "vm", "filter", "show", "dev", "eth0", "ingress"}),
                       "Egress Redirect to device img2vm-tap0"));
  // Its monitor's restore_netns while the VM runs: nothing is undone under it.
  EXPECT_EQ(restore_netns(state), "");
  EXPECT_EQ(ip_out({"-n", "vm", "-4", "-o", "addr", "show", "dev", "eth0"}), "");
  // That VM ends: its non-persistent tap goes with the last descriptor (the veth's filter, its
  // target gone, drops what arrives), and the monitor's restore_netns puts the namespace back
  // as it was, from the state's text alone.
  vmm.reset();
  EXPECT_FALSE(contains(ip_out({"-n", "vm", "link", "show"}), "img2vm-tap0"));
  EXPECT_EQ(restore_netns(state), "");
  EXPECT_TRUE(contains(ip_out({"-n", "vm", "-4", "-o", "addr", "show", "dev", "eth0"}),
                       "inet 10.99.0.2/24"));
  routes = ip_out({"-n", "vm", "-4", "route", "show"});
  EXPECT_TRUE(contains(routes, "default via 10.99.0.1 dev eth0")) << routes;
  EXPECT_TRUE(contains(routes, "192.168.77.0/24 via 10.99.0.1 dev eth0")) << routes;
  EXPECT_TRUE(contains(routes, "10.99.0.0/24 dev eth0 proto kernel")) << routes;
  EXPECT_FALSE(contains(out_of({"tc", "-n", "vm", "qdisc", "show", "dev", "eth0"}), "ingress"));
  // A state that is not one, or names a namespace gone, is an error line, never a throw.
  EXPECT_NE(restore_netns("{"), "");
  EXPECT_NE(restore_netns(R"({"netns": "/run/netns/none"})"), "");
}

// The test as the VMM on the tap's descriptor: a UDP datagram it writes (from the veth's MAC
// and address) reaches a socket in the peer namespace; the peer's datagram back comes out of
// the descriptor after the ARP exchange for the container's address, answered from the tap.
TEST_F(Netns, MirrorsFramesBetweenTheTapAndTheEnginesSide) {
  make_engine_netns();
  NetnsTap t(kVmNs);
  const int fd = t.device_fd();
  int size = int(kVnetHeader);
  ASSERT_EQ(::ioctl(fd, TUNSETVNETHDRSZ, &size), 0) << std::strerror(errno);
  ASSERT_EQ(::ioctl(fd, TUNSETOFFLOAD, 0u), 0) << std::strerror(errno);

  UniqueFd peer;
  in_netns("/run/netns/peer", [&] {
    peer.reset(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(5555);
    a.sin_addr.s_addr = htonl(ip("10.99.0.1"));
    if (!peer || ::bind(peer.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
      throw_errno("the peer's socket");
  });

  // Guest to peer.
  write_frame(fd, ether(kPeerMac, kVethMac, kIpv4,
                        udp(ip("10.99.0.2"), 4444, ip("10.99.0.1"), 5555, text("from the guest"))));
  pollfd p{peer.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1) << "nothing reached the peer";
  char buf[256];
  sockaddr_in from{};
  socklen_t len = sizeof from;
  ssize_t n = ::recvfrom(peer.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
  ASSERT_GT(n, 0) << std::strerror(errno);
  EXPECT_EQ(std::string(buf, size_t(n)), "from the guest");
  EXPECT_EQ(ntohl(from.sin_addr.s_addr), ip("10.99.0.2"));
  EXPECT_EQ(ntohs(from.sin_port), 4444);

  // Peer to guest: the peer asks who has 10.99.0.2 (the namespace's kernel no longer holds it
  // and never sees the request), the guest answers, the datagram follows.
  ASSERT_EQ(::sendto(peer.get(), "to the guest", 12, 0, reinterpret_cast<sockaddr*>(&from), len),
            12)
      << std::strerror(errno);
  auto arp_req = next_frame(
      fd,
      [](const Frame& f) {
        return f.type == kArp && f.arp_op == 1 && f.arp_target_ip == ip("10.99.0.2");
      },
      10s);
  ASSERT_TRUE(arp_req) << "no ARP request for 10.99.0.2 came out of the tap";
  EXPECT_EQ(arp_req->src, kPeerMac);
  EXPECT_EQ(arp_req->arp_sender_ip, ip("10.99.0.1"));
  write_frame(fd, arp_reply(ip("10.99.0.2"), kPeerMac, ip("10.99.0.1"), kVethMac));
  auto datagram = next_frame(
      fd, [](const Frame& f) { return f.type == kIpv4 && f.proto == kUdp && f.dport == 4444; },
      10s);
  ASSERT_TRUE(datagram) << "the peer's datagram did not come out of the tap";
  EXPECT_EQ(datagram->dst, kVethMac);
  EXPECT_EQ(datagram->src_ip, ip("10.99.0.1"));
  EXPECT_EQ(datagram->dst_ip, ip("10.99.0.2"));
  EXPECT_EQ(datagram->sport, 5555);
  EXPECT_EQ(std::string(datagram->payload.begin(), datagram->payload.end()), "to the guest");
}

// A dual-stack namespace: the guest gets the veth's global IPv6 addresses (not its link-local
// one: the guest's comes from the same MAC) and every route the namespace has through it in the
// main table but the kernel's and the default IPv4 one, IPv6 ones (the default too) included;
// a route with several next hops and what is past the bounds are listed as not carried, at most
// kMaxNotCarried lines, the last counting the rest.
TEST_F(Netns, TheGuestGetsTheIpv6AddressesAndRoutesAndWhatItCannotTakeIsListed) {
  make_engine_netns();
  ip_out({"-n", "peer", "-6", "addr", "add", "fd00:99::1/64", "dev", "peer0", "nodad"});
  ip_out({"-n", "vm", "-6", "addr", "add", "fd00:99::2/64", "dev", "eth0", "nodad"});
  ip_out({"-n", "vm", "-6", "addr", "add", "2001:db8:5::2/128", "dev", "eth0", "nodad"});
  ip_out({"-n", "vm", "-6", "route", "add", "default", "via", "fd00:99::1"});
  ip_out({"-n", "vm", "-6", "route", "add", "fd00:77::/48", "via", "fe80::1", "dev", "eth0"});
  ip_out({"-n", "vm", "route", "add", "169.254.1.1/32", "dev", "eth0"});
  ip_out({"-n", "vm", "route", "add", "10.50.0.0/16", "nexthop", "via", "10.99.0.1", "nexthop",
          "via", "10.99.0.3"});
  ip_out({"-n", "vm", "route", "add", "table", "100", "10.60.0.0/16", "via", "10.99.0.1"});
  ip_out({"-n", "vm", "route", "add", "blackhole", "10.70.0.0/16"});
  const size_t extra = netns::kMaxCarriedRoutes + 20;
  for (size_t k = 0; k < extra; ++k)
    ip_out(
        {"-n", "vm", "route", "add", "172.16." + std::to_string(k) + ".0/24", "via", "10.99.0.1"});
  std::optional<NetnsTap> t;
  t.emplace(kVmNs);
  const NetnsLink& i = t->info();
  EXPECT_EQ(i.gateway, "10.99.0.1");
  EXPECT_EQ(sorted(i.addresses6),
            (std::vector<NetnsAddress>{{"2001:db8:5::2", 128}, {"fd00:99::2", 64}}));
  auto has_route = [&](const NetnsRoute& r) {
    return std::find(i.routes.begin(), i.routes.end(), r) != i.routes.end();
  };
  ASSERT_EQ(i.routes.size(), netns::kMaxCarriedRoutes);
  // IPv4 first, the kernel listing them by destination: 169.254.1.1/32 and the first 63 of
  // 172.16.*.0/24; the other 21, 192.168.77.0/24 and the IPv6 ones are past the bound here.
  EXPECT_TRUE(has_route({"169.254.1.1", 32, ""}));
  EXPECT_TRUE(has_route({"172.16.0.0", 24, "10.99.0.1"}));
  for (const NetnsRoute& r : i.routes) {
    EXPECT_NE(r.destination, "10.50.0.0") << "multipath";
    EXPECT_NE(r.destination, "10.60.0.0") << "another table";
    EXPECT_NE(r.destination, "10.70.0.0") << "not through the interface";
    EXPECT_NE(r.destination, "10.99.0.0") << "the kernel's";
    EXPECT_NE(r.destination, "0.0.0.0") << "the default IPv4 route is the gateway";
  }
  const std::vector<std::string>& n = i.not_carried;
  ASSERT_EQ(n.size(), netns::kMaxNotCarried);
  EXPECT_NE(std::find(n.begin(), n.end(), "IPv4 route 10.50.0.0/16: 2 next hops"), n.end());
  EXPECT_EQ(n.back(), "10 more");  // 25 lines: 1 multipath, 22 IPv4 and 2 IPv6 past the bound
  for (const std::string& line : n) EXPECT_FALSE(contains(line, "fe80")) << line;
  t.reset();

  for (size_t k = 0; k < extra; ++k)
    ip_out({"-n", "vm", "route", "del", "172.16." + std::to_string(k) + ".0/24"});
  t.emplace(kVmNs);
  const NetnsLink& j = t->info();
  EXPECT_EQ(sorted(j.routes), (std::vector<NetnsRoute>{{"169.254.1.1", 32, ""},
                                                       {"192.168.77.0", 24, "10.99.0.1"},
                                                       {"::", 0, "fd00:99::1"},
                                                       {"fd00:77::", 48, "fe80::1"}}));
  EXPECT_EQ(j.not_carried, std::vector<std::string>{"IPv4 route 10.50.0.0/16: 2 next hops"});
}

TEST_F(Netns, ANamespaceThatIsNotThereOrNotANetworkNamespaceIsRefused) {
  std::string e = setup_error("/run/netns/nosuch");
  EXPECT_TRUE(contains(e, "network namespace /run/netns/nosuch: No such file or directory")) << e;
  e = setup_error("/proc/self/ns/uts");
  EXPECT_TRUE(contains(e, "network namespace /proc/self/ns/uts: not a network namespace")) << e;
}

// Without root: entering the namespace is refused, and the error says what is missing.
TEST_F(Netns, WithoutPrivilegesTheErrorSaysRootIsNeeded) {
  make_engine_netns();
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd rd(p[0]), wr(p[1]);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::string e = "cannot become nobody";
    if (::setresgid(65534, 65534, 65534) == 0 && ::setresuid(65534, 65534, 65534) == 0)
      e = setup_error(kVmNs);
    (void)!::write(wr.get(), e.data(), e.size());
    ::_exit(0);
  }
  wr.reset();
  std::string e;
  char buf[512];
  for (ssize_t n; (n = ::read(rd.get(), buf, sizeof buf)) > 0;) e.append(buf, size_t(n));
  int st = 0;
  ::waitpid(child, &st, 0);
  EXPECT_TRUE(contains(e,
                       "network namespace /run/netns/vm: cannot enter it: Operation not "
                       "permitted (needs root: CAP_SYS_ADMIN)"))
      << e;
  EXPECT_TRUE(contains(ip_out({"-n", "vm", "-4", "-o", "addr", "show", "dev", "eth0"}),
                       "inet 10.99.0.2/24"));
}

TEST_F(Netns, ANamespaceWithoutAnInterfaceUpIsRefused) {
  run_ip({"netns", "add", "empty"});
  std::string e = setup_error("/run/netns/empty");
  EXPECT_TRUE(contains(e,
                       "network namespace /run/netns/empty has no interface up besides "
                       "loopback; found: lo (down)"))
      << e;
  run_ip({"-n", "empty", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"});
  e = setup_error("/run/netns/empty");
  EXPECT_TRUE(contains(e, "found: lo (down), ")) << e;
  EXPECT_TRUE(contains(e, "eth0 (down)")) << e;
}

TEST_F(Netns, ANamespaceWithTwoInterfacesUpIsRefusedNamingThem) {
  run_ip({"netns", "add", "two"});
  run_ip({"-n", "two", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"});
  run_ip({"-n", "two", "link", "set", "eth0", "up"});
  run_ip({"-n", "two", "link", "set", "eth1", "up"});
  std::string e = setup_error("/run/netns/two");
  EXPECT_TRUE(contains(e, "has 2 interfaces up besides loopback (a VM takes one)")) << e;
  EXPECT_TRUE(contains(e, "eth0")) << e;
  EXPECT_TRUE(contains(e, "eth1")) << e;
  // Nothing was made.
  EXPECT_FALSE(contains(ip_out({"-n", "two", "link", "show"}), "img2vm-tap"));
}

TEST_F(Netns, AnInterfaceWithoutIpv4IsRefused) {
  run_ip({"netns", "add", "v6"});
  run_ip({"netns", "add", "other"});
  run_ip(
      {"-n", "v6", "link", "add", "eth0", "type", "veth", "peer", "name", "p0", "netns", "other"});
  run_ip({"-n", "v6", "link", "set", "eth0", "up"});
  std::string e = setup_error("/run/netns/v6");
  EXPECT_TRUE(contains(e, "eth0 has no IPv4 address")) << e;
  run_ip({"-n", "v6", "addr", "add", "10.99.1.2/24", "dev", "eth0"});
  run_ip({"-n", "v6", "addr", "add", "10.99.2.2/24", "dev", "eth0"});
  e = setup_error("/run/netns/v6");
  EXPECT_TRUE(contains(e, "eth0 has 2 IPv4 addresses (10.99.1.2/24, 10.99.2.2/24)")) << e;
}

// A step the kernel refuses (here: the veth has an ingress qdisc already) undoes the earlier
// ones: no tap left, the address still on the veth.
TEST_F(Netns, AFailedSetupLeavesTheNamespaceAsItWas) {
  make_engine_netns();
  ASSERT_EQ(out_of({"tc", "-n", "vm", "qdisc", "add", "dev", "eth0", "ingress"}), "");
  std::string e = setup_error(kVmNs);
  EXPECT_TRUE(contains(e,
                       "redirecting eth0 to img2vm-tap0: adding an ingress qdisc (it has one "
                       "already)"))
      << e;
  EXPECT_FALSE(contains(ip_out({"-n", "vm", "link", "show"}), "img2vm-tap"));
  EXPECT_TRUE(contains(ip_out({"-n", "vm", "-4", "-o", "addr", "show", "dev", "eth0"}),
                       "inet 10.99.0.2/24"));
  EXPECT_TRUE(contains(out_of({"tc", "-n", "vm", "qdisc", "show", "dev", "eth0"}), "ingress"));
}

}  // namespace
