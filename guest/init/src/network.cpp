#include "img2vm/init/network.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
// After netinet/in.h, whose in6_addr it then takes.
#include <linux/ipv6.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "img2vm/init/sys.hpp"

namespace img2vm::init {

uint32_t prefix_netmask(unsigned prefix) {
  if (prefix > 32) throw Error("prefix length " + std::to_string(prefix) + " is over 32");
  uint32_t host = prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix);
  return htonl(host);
}

namespace {

sockaddr ipv4_sockaddr(uint32_t net_order) {
  sockaddr sa{};
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = net_order;
  std::memcpy(&sa, &sin, sizeof sin);
  return sa;
}

uint32_t parse_ipv4(const std::string& text, const std::string& what) {
  in_addr a{};
  if (::inet_pton(AF_INET, text.c_str(), &a) != 1)
    throw Error(what + " \"" + text + "\" is not an IPv4 address");
  return a.s_addr;
}

in6_addr parse_ipv6(const std::string& text, const std::string& what) {
  in6_addr a{};
  if (::inet_pton(AF_INET6, text.c_str(), &a) != 1)
    throw Error(what + " \"" + text + "\" is not an IPv6 address");
  return a;
}

bool is_ipv6(const std::string& text) { return text.find(':') != std::string::npos; }

// The interface's IPv6 addresses, without duplicate address detection: they are the engine's,
// whose namespace detected them; the guest's interface has its place on the link.
void add_ipv6_addresses(const guestabi::NetConfig& cfg, unsigned ifindex) {
  if (cfg.addresses6.empty()) return;
  const std::string knob = "/proc/sys/net/ipv6/conf/" + cfg.interface + "/accept_dad";
  UniqueFd f(::open(knob.c_str(), O_WRONLY | O_CLOEXEC));
  if (!f || ::write(f.get(), "0", 1) != 1)
    throw Error("configuring " + cfg.interface + ": " + knob + ": " + std::strerror(errno) +
                " (is IPv6 in the guest kernel?)");
  UniqueFd s6(::socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s6) throw_errno("configuring " + cfg.interface + ": IPv6 socket");
  for (const guestabi::NetAddress6& a : cfg.addresses6) {
    in6_ifreq r{};
    r.ifr6_addr = parse_ipv6(a.address, "IPv6 address");
    r.ifr6_prefixlen = a.prefix;
    r.ifr6_ifindex = int(ifindex);
    if (::ioctl(s6.get(), SIOCSIFADDR, &r) != 0 && errno != EEXIST)
      throw Error("configuring " + cfg.interface + ": adding " + a.address + "/" +
                  std::to_string(a.prefix) + ": " + std::strerror(errno));
  }
}

// One of cfg.routes through the interface: rtentry for IPv4, in6_rtmsg for IPv6. A route that is
// there already (the kernel's, or the gateway's own host route) is not an error.
void add_route(int s4, int s6, const guestabi::NetConfig& cfg, unsigned ifindex,
               const guestabi::NetRoute& r) {
  const std::string what = r.destination + "/" + std::to_string(r.prefix) +
                           (r.gateway.empty() ? "" : " via " + r.gateway);
  int rc = 0;
  if (is_ipv6(r.destination)) {
    in6_rtmsg m{};
    m.rtmsg_dst = parse_ipv6(r.destination, "route");
    m.rtmsg_dst_len = uint16_t(r.prefix);
    m.rtmsg_flags = RTF_UP;
    if (!r.gateway.empty()) {
      m.rtmsg_gateway = parse_ipv6(r.gateway, "gateway");
      m.rtmsg_flags |= RTF_GATEWAY;
    }
    m.rtmsg_metric = 1;
    m.rtmsg_ifindex = int(ifindex);
    rc = ::ioctl(s6, SIOCADDRT, &m);
  } else {
    std::string dev = cfg.interface;
    rtentry e{};
    e.rt_dst = ipv4_sockaddr(parse_ipv4(r.destination, "route"));
    e.rt_genmask = ipv4_sockaddr(prefix_netmask(r.prefix));
    e.rt_flags = RTF_UP | (r.prefix == 32 ? RTF_HOST : 0);
    if (!r.gateway.empty()) {
      e.rt_gateway = ipv4_sockaddr(parse_ipv4(r.gateway, "gateway"));
      e.rt_flags |= RTF_GATEWAY;
    }
    e.rt_dev = dev.data();
    rc = ::ioctl(s4, SIOCADDRT, &e);
  }
  if (rc != 0 && errno != EEXIST)
    throw Error("configuring " + cfg.interface + ": adding the route to " + what + ": " +
                std::strerror(errno));
}

}  // namespace

void configure_interface(const guestabi::NetConfig& cfg) {
  const std::string& ifn = cfg.interface;
  if (ifn.empty() || ifn.size() >= IFNAMSIZ) throw Error("bad interface name \"" + ifn + "\"");
  uint32_t addr = parse_ipv4(cfg.address, "address");
  uint32_t mask = prefix_netmask(cfg.prefix);
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s) throw_errno("configuring " + ifn + ": socket");

  auto request = [&](unsigned long op, ifreq& r, const char* step) {
    std::strncpy(r.ifr_name, ifn.c_str(), IFNAMSIZ - 1);
    if (::ioctl(s.get(), op, &r) != 0) {
      int err = errno;
      std::string why = err == ENODEV ? "no such interface (does the VM have a network device?)"
                                      : std::strerror(err);
      throw Error("configuring " + ifn + ": " + step + ": " + why);
    }
  };
  ifreq r{};
  if (!cfg.mac.empty()) {
    // While the link is down: virtio-net without a control queue takes a new address only then.
    auto mac = guestabi::parse_unicast_mac(cfg.mac);
    if (!mac) throw Error("configuring " + ifn + ": \"" + cfg.mac + "\" is not a unicast MAC");
    r.ifr_hwaddr.sa_family = ARPHRD_ETHER;
    std::memcpy(r.ifr_hwaddr.sa_data, mac->data(), mac->size());
    request(SIOCSIFHWADDR, r, "setting the MAC address");
    r = {};
  }
  r.ifr_addr = ipv4_sockaddr(addr);
  request(SIOCSIFADDR, r, "setting the address");
  r = {};
  r.ifr_netmask = ipv4_sockaddr(mask);
  request(SIOCSIFNETMASK, r, "setting the netmask");
  if (cfg.mtu) {
    r = {};
    r.ifr_mtu = int(cfg.mtu);
    request(SIOCSIFMTU, r, "setting the MTU");
  }
  r = {};
  request(SIOCGIFFLAGS, r, "reading the flags");
  r.ifr_flags = short(r.ifr_flags | IFF_UP | IFF_RUNNING);
  request(SIOCSIFFLAGS, r, "bringing the link up");

  if (!cfg.gateway.empty()) {
    uint32_t gw = parse_ipv4(cfg.gateway, "gateway");
    std::string dev = ifn;
    // A gateway outside the interface's subnet (a pod's /32 behind 169.254.1.1, as Calico and
    // Cilium give it) is on the link all the same: a host route to it first.
    if ((gw & mask) != (addr & mask)) {
      rtentry host{};
      host.rt_dst = ipv4_sockaddr(gw);
      host.rt_genmask = ipv4_sockaddr(0xffffffffu);
      host.rt_flags = RTF_UP | RTF_HOST;
      host.rt_dev = dev.data();
      if (::ioctl(s.get(), SIOCADDRT, &host) != 0 && errno != EEXIST)
        throw Error("configuring " + ifn + ": adding a route to the gateway " + cfg.gateway + ": " +
                    std::strerror(errno));
    }
    rtentry rt{};
    rt.rt_dst = ipv4_sockaddr(0);
    rt.rt_genmask = ipv4_sockaddr(0);
    rt.rt_gateway = ipv4_sockaddr(gw);
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    rt.rt_dev = dev.data();
    if (::ioctl(s.get(), SIOCADDRT, &rt) != 0 && errno != EEXIST)
      throw Error("configuring " + ifn + ": adding the default route via " + cfg.gateway + ": " +
                  std::strerror(errno));
  }

  if (cfg.addresses6.empty() && cfg.routes.empty()) return;
  const unsigned ifindex = ::if_nametoindex(ifn.c_str());
  if (ifindex == 0) throw_errno("configuring " + ifn + ": its index");
  add_ipv6_addresses(cfg, ifindex);
  UniqueFd s6;
  if (std::any_of(cfg.routes.begin(), cfg.routes.end(),
                  [](const guestabi::NetRoute& x) { return is_ipv6(x.destination); })) {
    s6 = UniqueFd(::socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!s6) throw_errno("configuring " + ifn + ": IPv6 socket");
  }
  // Routes on the link first: a gateway may be reachable only through one of them.
  for (bool via : {false, true})
    for (const auto& route : cfg.routes)
      if (route.gateway.empty() != via) add_route(s.get(), s6.get(), cfg, ifindex, route);
}

}  // namespace img2vm::init
