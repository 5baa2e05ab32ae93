#include "img2vm/init/network.hpp"

#include <arpa/inet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

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
}

}  // namespace img2vm::init
