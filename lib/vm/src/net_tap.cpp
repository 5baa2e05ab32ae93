#include "img2vm/vm/net_tap.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/if_tun.h>
#include <net/if.h>  // before linux/if_tun.h: glibc's ifreq and if_nametoindex
#include <net/if_arp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "nft_api.hpp"
#include "virtio_net.hpp"

namespace img2vm::vm {

namespace {

constexpr const char* kLockDir = "/run/img2vm";
constexpr const char* kLockFile = "/run/img2vm/tap.lock";
// An empty table that records, in the network namespace itself, that a managed backend switched
// net.ipv4.ip_forward on: the last one to end switches it back off and deletes the table.
constexpr const char* kForwardingMark = "ip img2vmfwd";

uint32_t parse_ip(std::string_view s) {
  in_addr a{};
  if (::inet_pton(AF_INET, std::string(s).c_str(), &a) != 1)
    throw Error(ErrorKind::kInternal, "bad IPv4 address " + std::string(s));
  return ntohl(a.s_addr);
}

std::string ip_str(uint32_t v) {
  in_addr a{};
  a.s_addr = htonl(v);
  char buf[INET_ADDRSTRLEN];
  ::inet_ntop(AF_INET, &a, buf, sizeof buf);
  return buf;
}

uint32_t mask_of(unsigned prefix) { return prefix == 0 ? 0 : ~uint32_t(0) << (32 - prefix); }

std::string errno_text(int e) { return std::strerror(e); }

// An interface request for `dev` (names are checked to fit beforehand).
ifreq ifreq_for(const std::string& dev) {
  ifreq r{};
  std::memcpy(r.ifr_name, dev.data(), std::min<size_t>(dev.size(), IFNAMSIZ - 1));
  return r;
}

// One nftables context (libnftables, opened on first use: nft_api.hpp); commands run as one
// transaction each.
class Nft {
 public:
  Nft() : api_(nft::api()), ctx_(api_.ctx_new(NFT_CTX_DEFAULT)) {
    if (!ctx_) throw Error(ErrorKind::kInternal, "nftables: cannot create a context");
    api_.ctx_buffer_output(ctx_);
    api_.ctx_buffer_error(ctx_);
  }
  ~Nft() { api_.ctx_free(ctx_); }
  Nft(const Nft&) = delete;
  Nft& operator=(const Nft&) = delete;

  // Runs `cmds`; returns the output, or throws naming `what` with nftables' own message.
  std::string run(const std::string& cmds, const std::string& what) {
    if (api_.run_cmd_from_buffer(ctx_, cmds.c_str()) != 0) {
      std::string err = api_.ctx_get_error_buffer(ctx_);
      while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
      auto nl = err.find('\n');
      throw Error(ErrorKind::kIo,
                  what + ": nftables: " + (nl == std::string::npos ? err : err.substr(0, nl)));
    }
    (void)api_.ctx_get_error_buffer(ctx_);
    return api_.ctx_get_output_buffer(ctx_);
  }
  bool try_run(const std::string& cmds) noexcept {
    bool ok = api_.run_cmd_from_buffer(ctx_, cmds.c_str()) == 0;
    (void)api_.ctx_get_output_buffer(ctx_);
    (void)api_.ctx_get_error_buffer(ctx_);
    return ok;
  }

 private:
  const nft::Api& api_;
  nft_ctx* ctx_;
};

// Each managed device has two tables of the same name ("img2vm_<device>"): one in the `ip`
// family (NAT and the IPv4 filter) and one in the `netdev` family (what the guest may send).
constexpr const char* kFamilies[] = {"ip", "netdev"};

// The managed tables ("img2vm_<device>") of `family` present now.
std::vector<std::string> managed_tables(Nft& nft, const std::string& family = "ip") {
  std::vector<std::string> out;
  std::istringstream in(nft.run("list tables " + family, "listing nftables tables"));
  const std::string head = "table " + family + " " + std::string(tapnet::kTablePrefix);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(head, 0) == 0) out.push_back(line.substr(7 + family.size()));
  return out;
}

// An exclusive lock that serialises the host-side setup and teardown of managed devices
// (subnet choice, stale rules, ip_forward) across runners.
class HostLock {
 public:
  HostLock() {
    std::error_code ec;
    std::filesystem::create_directories(kLockDir, ec);  // also /run itself on a bare system
    fd_.reset(::open(kLockFile, O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (!fd_)
      throw Error(ErrorKind::kIo, std::string("tap network: cannot open the lock ") + kLockFile +
                                      ": " + errno_text(errno));
    while (::flock(fd_.get(), LOCK_EX) != 0)
      if (errno != EINTR)
        throw Error(ErrorKind::kInternal, std::string("tap network: cannot lock ") + kLockFile +
                                              ": " + errno_text(errno));
  }

 private:
  UniqueFd fd_;
};

std::string read_sysctl(const std::string& path) {
  std::ifstream in(path);
  std::string v;
  in >> v;
  return v;
}

void write_sysctl(const std::string& path, const std::string& value) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd || ::write(fd.get(), value.data(), value.size()) != ssize_t(value.size()))
    throw Error(ErrorKind::kIo,
                "tap network: cannot set " + path + " to " + value + ": " + errno_text(errno));
}

// ioctl on an AF_INET datagram socket for interface requests.
struct IfSocket {
  UniqueFd fd{::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)};
  ifreq req(const std::string& dev) const { return ifreq_for(dev); }
};

void set_addr(const IfSocket& s, const std::string& dev, unsigned long op, uint32_t v,
              const char* what) {
  ifreq r = s.req(dev);
  auto* sin = reinterpret_cast<sockaddr_in*>(&r.ifr_addr);
  sin->sin_family = AF_INET;
  sin->sin_addr.s_addr = htonl(v);
  if (::ioctl(s.fd.get(), op, &r) != 0)
    throw Error(ErrorKind::kIo,
                "tap device " + dev + ": cannot set its " + what + ": " + errno_text(errno));
}

std::optional<uint32_t> get_addr(const IfSocket& s, const std::string& dev, unsigned long op) {
  ifreq r = s.req(dev);
  if (::ioctl(s.fd.get(), op, &r) != 0) return std::nullopt;
  return ntohl(reinterpret_cast<sockaddr_in*>(&r.ifr_addr)->sin_addr.s_addr);
}

// The first /30 of the pool that overlaps no IPv4 network configured on this host.
uint32_t free_subnet() {
  struct Net {
    uint32_t base, mask;
  };
  std::vector<Net> used;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0)
    throw Error(ErrorKind::kInternal, "tap network: getifaddrs: " + errno_text(errno));
  for (ifaddrs* a = list; a; a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET) continue;
    uint32_t addr = ntohl(reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr.s_addr);
    uint32_t mask = a->ifa_netmask
                        ? ntohl(reinterpret_cast<sockaddr_in*>(a->ifa_netmask)->sin_addr.s_addr)
                        : ~0u;
    used.push_back({addr & mask, mask});
  }
  ::freeifaddrs(list);
  const uint32_t pool = parse_ip(tapnet::kPool), pool_mask = mask_of(tapnet::kPoolPrefixLength);
  for (uint32_t net = pool; (net & pool_mask) == pool; net += 4) {
    bool clash = false;
    for (const auto& u : used) {
      // Two networks overlap when one contains the other's base.
      uint32_t m = u.mask & mask_of(30);
      if ((net & m) == (u.base & m)) clash = true;
    }
    if (!clash) return net;
    if (net + 4 < net) break;
  }
  throw Error(ErrorKind::kLimit, "tap network: no free /30 left in " + std::string(tapnet::kPool) +
                                     "/" + std::to_string(tapnet::kPoolPrefixLength));
}

// A host socket that holds a published port while the VM runs, as docker's proxy does: the
// port cannot be taken by another program (or VM), and a port 0 becomes a free one.
UniqueFd reserve_port(const PortForward& f, uint16_t& port) {
  UniqueFd s(::socket(
      AF_INET, (f.protocol == PortProtocol::kUdp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC, 0));
  if (!s) throw Error(ErrorKind::kInternal, "socket: " + errno_text(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(f.host_port);
  if (::inet_pton(AF_INET, f.host_ip.c_str(), &a.sin_addr) != 1)
    throw Error(ErrorKind::kInvalidArgument,
                "-p " + to_string(f) + ": the tap network publishes on IPv4 addresses only");
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    int e = errno;
    if (e == EADDRINUSE)
      throw Error(ErrorKind::kIo, "-p " + to_string(f) + ": host port " +
                                      std::to_string(f.host_port) + "/" + to_string(f.protocol) +
                                      " is already in use");
    throw Error(ErrorKind::kInvalidArgument,
                "-p " + to_string(f) + ": cannot bind " + f.host_ip + ": " + errno_text(e));
  }
  socklen_t len = sizeof a;
  ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return s;
}

// Deletes the tables whose device is gone (call with the HostLock held); names each once.
std::vector<std::string> remove_stale(Nft& nft) {
  std::vector<std::string> removed;
  for (const char* family : kFamilies) {
    for (const auto& t : managed_tables(nft, family)) {
      std::string dev = t.substr(tapnet::kTablePrefix.size());
      if (::if_nametoindex(dev.c_str()) != 0) continue;
      if (nft.try_run(std::string("delete table ") + family + " " + t) &&
          std::find(removed.begin(), removed.end(), t) == removed.end())
        removed.push_back(t);
    }
  }
  return removed;
}

std::string mac_str(const std::array<uint8_t, 6>& m) {
  char buf[18];
  std::snprintf(buf, sizeof buf, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4],
                m[5]);
  return buf;
}

// Whether a published port's host address includes the host's loopback (0.0.0.0 or 127.0.0.0/8):
// its connections leave through the device with a loopback source, which needs route_localnet.
bool reaches_from_loopback(const PortForward& f) {
  in_addr a{};
  if (::inet_pton(AF_INET, f.host_ip.c_str(), &a) != 1) return false;  // refused later
  const uint32_t v = ntohl(a.s_addr);
  return v == 0 || (v >> 24) == 127;
}

}  // namespace

std::vector<std::string> remove_stale_tap_rules() {
  HostLock lock;
  Nft nft;
  return remove_stale(nft);
}

struct TapBackend::Impl {
  TapNetInfo info;
  UniqueFd tap;                   // until it is attached to a device
  std::unique_ptr<TapDevice> io;  // then the frame path
  std::vector<PortForward> published;
  std::vector<UniqueFd> reserved;

  void setup_managed(const TapNetConfig& c, uint16_t mtu);
  void attach_existing(const std::string& name);
  int open_tap(const std::string& name);
  std::string ruleset(const TapNetConfig& c) const;
  void teardown() noexcept;
};

// Opens /dev/net/tun as the tap device `name` (a pattern with %d picks a free name), frames
// with a virtio-net header. Returns 0 (the name it got in info.device) or TUNSETIFF's errno.
int TapBackend::Impl::open_tap(const std::string& name) {
  tap.reset(::open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK));
  if (!tap)
    throw Error(ErrorKind::kNotFound,
                "tap network: cannot open /dev/net/tun: " + errno_text(errno));
  ifreq r = ifreq_for(name);
  r.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  if (::ioctl(tap.get(), TUNSETIFF, &r) != 0) return errno;
  info.device = r.ifr_name;
  return 0;
}

void TapBackend::Impl::attach_existing(const std::string& name) {
  if (int e = open_tap(name)) {
    if (e == EPERM || e == EACCES)
      throw Error(ErrorKind::kIo, "tap device " + name +
                                      ": not allowed to attach (it belongs to another user; "
                                      "create it with `ip tuntap add " +
                                      name + " mode tap user $USER`)");
    if (e == EINVAL)
      throw Error(ErrorKind::kInvalidArgument,
                  "tap device " + name + ": a device of that name exists and is not a tap device");
    if (e == EBUSY)
      throw Error(ErrorKind::kIo, "tap device " + name + ": already attached to another program");
    throw Error(ErrorKind::kInternal, "tap device " + name + ": TUNSETIFF: " + errno_text(e));
  }
  io = std::make_unique<TapDevice>(std::move(tap));
  IfSocket s;
  auto host = get_addr(s, info.device, SIOCGIFADDR);
  auto mask = get_addr(s, info.device, SIOCGIFNETMASK);
  if (!host || !mask)
    throw Error(ErrorKind::kInvalidArgument, "tap device " + info.device +
                                                 " has no IPv4 address: give it one "
                                                 "(ip addr add 172.16.0.1/30 dev " +
                                                 info.device +
                                                 ") or let img2vm create a device (--network tap)");
  unsigned prefix = unsigned(__builtin_popcount(*mask));
  if (prefix > 30)
    throw Error(ErrorKind::kInvalidArgument, "tap device " + info.device + ": its subnet /" +
                                                 std::to_string(prefix) +
                                                 " has no room for a guest address");
  const uint32_t net = *host & *mask, bcast = net | ~*mask;
  uint32_t guest = *host + 1;
  if (guest >= bcast) guest = *host - 1;
  if (guest <= net)
    throw Error(ErrorKind::kInvalidArgument,
                "tap device " + info.device + ": no free guest address next to " + ip_str(*host));
  info.host_ip = ip_str(*host);
  info.guest_ip = ip_str(guest);
  info.prefix_length = prefix;
}

std::string TapBackend::Impl::ruleset(const TapNetConfig& c) const {
  const bool outbound = c.outbound;
  const std::string d = "\"" + info.device + "\"";
  const std::string pool =
      std::string(tapnet::kPool) + "/" + std::to_string(tapnet::kPoolPrefixLength);
  std::string dnat;
  for (const auto& f : published) {
    const char* proto = f.protocol == PortProtocol::kUdp ? "udp" : "tcp";
    std::string match =
        f.host_ip == "0.0.0.0" ? "fib daddr type local " : "ip daddr " + f.host_ip + " ";
    dnat += "    " + match + proto + " dport " + std::to_string(f.host_port) + " dnat to " +
            info.guest_ip + ":" + std::to_string(f.guest_port) + "\n";
  }
  std::string t = "table ip " + info.table.substr(3) + " {\n";
  t += "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n" +
       dnat + "  }\n";
  t +=
      "  chain output {\n    type nat hook output priority -100; policy accept;\n" + dnat + "  }\n";
  t += "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n"
       "    oifname " +
       d + " ip saddr 127.0.0.0/8 masquerade\n";
  if (outbound) t += "    ip saddr " + info.guest_ip + " oifname != " + d + " masquerade\n";
  t += "  }\n";
  // Toward the guest: replies and published ports only. From the guest: never another VM's
  // subnet; the outside world when outbound is on, else replies only.
  t += "  chain forward {\n    type filter hook forward priority filter; policy accept;\n"
       "    oifname " +
       d +
       " ct state established,related accept\n"
       "    oifname " +
       d +
       " ct status dnat accept\n"
       "    oifname " +
       d +
       " drop\n"
       "    iifname " +
       d + " ip daddr " + pool +
       " drop\n"
       "    iifname " +
       d + " ct state established,related accept\n";
  if (outbound) t += "    iifname " + d + " accept\n";
  t += "    iifname " + d + " drop\n  }\n";
  // The host's own services are not the guest's business: replies, and ping of the gateway.
  t += "  chain input {\n    type filter hook input priority filter; policy accept;\n"
       "    iifname " +
       d +
       " ct state established,related accept\n"
       "    iifname " +
       d +
       " icmp type echo-request accept\n"
       "    iifname " +
       d + " drop\n  }\n}\n";
  // What the guest may send at all, checked as each frame enters the host (before IPv6, ARP,
  // routing, conntrack or the rules above see it): ARP and IPv4 from its own MAC and address,
  // to no loopback, "this network", multicast, broadcast or class E address. Nothing else: no
  // IPv6 (router advertisements included), no spoofed source.
  const uint32_t guest = parse_ip(info.guest_ip), bcast = guest | ~mask_of(info.prefix_length);
  const std::string from_guest = "ether saddr " + mac_str(c.guest_mac) + " ";
  t += "table netdev " + info.table.substr(3) + " {\n  chain from_guest {\n";
  t += "    type filter hook ingress device " + d + " priority -500; policy drop;\n";
  t += "    " + from_guest + "arp saddr ether " + mac_str(c.guest_mac) + " arp saddr ip { " +
       info.guest_ip + ", 0.0.0.0 } accept\n";
  t += "    " + from_guest + "ip saddr " + info.guest_ip +
       " ip daddr != { 0.0.0.0/8, 127.0.0.0/8, 224.0.0.0/3, " + ip_str(bcast) +
       " } accept\n  }\n}\n";
  return t;
}

void TapBackend::Impl::setup_managed(const TapNetConfig& c, uint16_t mtu) {
  HostLock lock;
  Nft nft;
  remove_stale(nft);

  std::string want = c.name.empty() ? std::string(tapnet::kDevicePrefix) + "%d" : c.name;
  if (int e = open_tap(want)) {
    if (e == EPERM || e == EACCES)
      throw Error(ErrorKind::kIo,
                  "tap network: creating a tap device needs CAP_NET_ADMIN (run as root), "
                  "or use --network user (rootless)");
    throw Error(ErrorKind::kInternal,
                "tap network: cannot create tap device " + want + ": " + errno_text(e));
  }
  info.managed = true;
  io = std::make_unique<TapDevice>(std::move(tap));
  info.table = "ip " + std::string(tapnet::kTablePrefix) + info.device;
  if (info.device.size() + tapnet::kTablePrefix.size() > 255)
    throw Error(ErrorKind::kInvalidArgument, "tap device name too long: " + info.device);

  // No IPv6 on the device: the host side gets no link-local address and takes no router
  // advertisement from the guest (set before the device is up). Strict reverse-path checks
  // drop a source address the host would not route back through the device.
  if (::access("/proc/sys/net/ipv6/conf", F_OK) == 0) {
    write_sysctl("/proc/sys/net/ipv6/conf/" + info.device + "/accept_ra", "0");
    write_sysctl("/proc/sys/net/ipv6/conf/" + info.device + "/disable_ipv6", "1");
  }
  write_sysctl("/proc/sys/net/ipv4/conf/" + info.device + "/rp_filter", "1");

  const uint32_t net = free_subnet();
  info.host_ip = ip_str(net + 1);
  info.guest_ip = ip_str(net + 2);
  info.prefix_length = 30;
  IfSocket s;
  set_addr(s, info.device, SIOCSIFADDR, net + 1, "address");
  set_addr(s, info.device, SIOCSIFNETMASK, mask_of(30), "netmask");
  {
    ifreq q = s.req(info.device);
    q.ifr_mtu = mtu;
    if (::ioctl(s.fd.get(), SIOCSIFMTU, &q) != 0)
      throw Error(ErrorKind::kInvalidArgument, "tap device " + info.device + ": cannot set MTU " +
                                                   std::to_string(mtu) + ": " + errno_text(errno));
    q = s.req(info.device);
    if (::ioctl(s.fd.get(), SIOCGIFFLAGS, &q) != 0 ||
        (q.ifr_flags |= IFF_UP, ::ioctl(s.fd.get(), SIOCSIFFLAGS, &q) != 0))
      throw Error(ErrorKind::kIo,
                  "tap device " + info.device + ": cannot bring it up: " + errno_text(errno));
  }

  // Connections from the host's loopback to a published port leave through the device with a
  // loopback source (masqueraded on the way) and their replies come back to 127.0.0.1: only
  // then does the device route loopback addresses. A guest's own frames to 127.0.0.0/8 are
  // dropped as they enter (the netdev table) and again in the input chain.
  if (std::any_of(c.forwards.begin(), c.forwards.end(), reaches_from_loopback))
    write_sysctl("/proc/sys/net/ipv4/conf/" + info.device + "/route_localnet", "1");
  if (read_sysctl("/proc/sys/net/ipv4/ip_forward") != "1") {
    nft.run(std::string("add table ") + kForwardingMark, "tap network: recording ip_forward");
    write_sysctl("/proc/sys/net/ipv4/ip_forward", "1");
  }

  for (const auto& f : c.forwards) {
    PortForward p = f;
    reserved.push_back(reserve_port(f, p.host_port));
    published.push_back(p);
  }
  // Tables of the same name can only be leftovers: replace them in the same transaction.
  const std::string name = info.table.substr(3);
  std::string cmds;
  for (const char* family : kFamilies)
    cmds += std::string("add table ") + family + " " + name + "\ndelete table " + family + " " +
            name + "\n";
  nft.run(cmds + ruleset(c), "tap device " + info.device + ": installing its rules");
}

void TapBackend::Impl::teardown() noexcept {
  if (!info.managed) return;
  try {
    HostLock lock;
    Nft nft;
    for (const char* family : kFamilies)
      nft.try_run(std::string("delete table ") + family + " " + info.table.substr(3));
    io.reset();  // the device goes with its last descriptor
    tap.reset();
    reserved.clear();
    if (managed_tables(nft).empty() && nft.try_run(std::string("list table ") + kForwardingMark)) {
      try {
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "0");
      } catch (...) {
      }
      nft.try_run(std::string("delete table ") + kForwardingMark);
    }
  } catch (...) {
    // Best effort: a table left behind is removed by the next managed backend.
  }
}

TapBackend::TapBackend(const TapNetConfig& config, uint16_t mtu) : impl_(std::make_unique<Impl>()) {
  if (mtu < VirtioNet::kMinMtu || mtu > VirtioNet::kMaxMtu)
    throw Error(ErrorKind::kInvalidArgument, "network MTU " + std::to_string(mtu) + " is outside " +
                                                 std::to_string(VirtioNet::kMinMtu) + "-" +
                                                 std::to_string(VirtioNet::kMaxMtu));
  if (config.name.size() >= IFNAMSIZ)
    throw Error(ErrorKind::kInvalidArgument, "tap device name \"" + config.name +
                                                 "\" is longer than " +
                                                 std::to_string(IFNAMSIZ - 1) + " characters");
  const bool exists = !config.name.empty() && ::if_nametoindex(config.name.c_str()) != 0;
  // A device img2vm makes names its nftables tables and appears in their rules, so its name is
  // kept to what those take as it is: a letter first, then letters, digits, '_', '.' or '-'.
  if (!exists && !config.name.empty() && !tapnet::valid_device_name(config.name))
    throw Error(ErrorKind::kInvalidArgument,
                "tap device name \"" + config.name +
                    "\": use a letter, then letters, digits, '_', '.' or '-'");
  try {
    if (exists) {
      if (!config.forwards.empty())
        throw Error(
            ErrorKind::kInvalidArgument,
            "-p: tap device " + config.name +
                " was made by someone else, so img2vm sets up "
                "no rules for it; publish ports with --network tap (a device of img2vm's own)");
      impl_->attach_existing(config.name);
    } else {
      impl_->setup_managed(config, mtu);
    }
  } catch (...) {
    impl_->teardown();
    throw;
  }
}

TapBackend::~TapBackend() { impl_->teardown(); }

const TapNetInfo& TapBackend::info() const noexcept { return impl_->info; }

int TapBackend::device_fd() const noexcept { return impl_->io->fd(); }

std::vector<PortForward> TapBackend::published() const { return impl_->published; }

void TapBackend::attach(NetDeviceSide* device) { impl_->io->attach(device); }

void TapBackend::send(std::span<const uint8_t> frame) { impl_->io->send(frame); }

void TapBackend::set_guest_offloads(bool csum, bool tso4, bool tso6) {
  impl_->io->set_guest_offloads(csum, tso4, tso6);
}

void TapBackend::rx_ready() { impl_->io->rx_ready(); }

void TapBackend::run(std::span<const Watch> watches) { impl_->io->run(watches); }

}  // namespace img2vm::vm
