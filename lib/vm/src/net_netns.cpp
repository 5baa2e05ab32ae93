#include "img2vm/vm/net_netns.hpp"

// glibc's net/if.h before any kernel header that pulls linux/if.h (libnl's, linux/if_tun.h).
#include <net/if.h>
// Before libnl's headers, which use these without including them.
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
//
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/nsfs.h>
#include <net/if_arp.h>
#include <netlink/netlink.h>
#include <netlink/route/act/mirred.h>
#include <netlink/route/action.h>
#include <netlink/route/addr.h>
#include <netlink/route/classifier.h>
#include <netlink/route/cls/u32.h>
#include <netlink/route/link.h>
#include <netlink/route/qdisc.h>
#include <netlink/route/route.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

namespace img2vm::vm {

namespace {

// libnl objects, each released with its own function.
template <class T, void (*Release)(T*)>
struct Releaser {
  void operator()(T* p) const noexcept {
    if (p) Release(p);
  }
};
using Sock = std::unique_ptr<nl_sock, Releaser<nl_sock, nl_socket_free>>;
using Cache = std::unique_ptr<nl_cache, Releaser<nl_cache, nl_cache_free>>;
using Link = std::unique_ptr<rtnl_link, Releaser<rtnl_link, rtnl_link_put>>;
using Addr = std::unique_ptr<rtnl_addr, Releaser<rtnl_addr, rtnl_addr_put>>;
using Route = std::unique_ptr<rtnl_route, Releaser<rtnl_route, rtnl_route_put>>;
using Qdisc = std::unique_ptr<rtnl_qdisc, Releaser<rtnl_qdisc, rtnl_qdisc_put>>;
using Cls = std::unique_ptr<rtnl_cls, Releaser<rtnl_cls, rtnl_cls_put>>;
using Act = std::unique_ptr<rtnl_act, Releaser<rtnl_act, rtnl_act_put>>;

template <class T>
rtnl_tc* tc(T* p) {
  return reinterpret_cast<rtnl_tc*>(p);
}
template <class T>
nl_object* obj(T* p) {
  return reinterpret_cast<nl_object*>(p);
}

// Runs `f` on a thread of its own that has entered the network namespace `ns` (so the calling
// thread's namespace never changes); rethrows what `f` throws.
void in_netns(int ns, const std::string& where, const std::function<void()>& f) {
  std::exception_ptr failure;
  std::thread t([&] {
    try {
      if (::setns(ns, CLONE_NEWNET) != 0) {
        int e = errno;
        throw Error(ErrorKind::kIo, where + ": cannot enter it: " + std::strerror(e) +
                                        (e == EPERM ? " (needs root: CAP_SYS_ADMIN)" : ""));
      }
      f();
    } catch (...) {
      failure = std::current_exception();
    }
  });
  t.join();
  if (failure) std::rethrow_exception(failure);
}

// The Error for libnl's code `err` (negative) on `what`.
[[noreturn]] void nl_fail(const std::string& what, int err) {
  std::string why = ::nl_geterror(err);
  if (err == -NLE_PERM || err == -NLE_NOACCESS) why += " (needs CAP_NET_ADMIN in it: root)";
  throw Error(ErrorKind::kIo, what + ": " + why);
}

Sock route_socket(const std::string& where) {
  Sock s(::nl_socket_alloc());
  if (!s) throw Error(ErrorKind::kInternal, where + ": netlink: out of memory");
  if (int e = ::nl_connect(s.get(), NETLINK_ROUTE); e < 0) nl_fail(where + ": netlink", e);
  return s;
}

// The objects of `cache` (at most `max`, else Error naming `what`).
template <class T>
std::vector<T*> items(nl_cache* cache, size_t max, const std::string& what) {
  if (size_t(::nl_cache_nitems(cache)) > max)
    throw Error(ErrorKind::kLimit, what + ": more than " + std::to_string(max) +
                                       " (a container's network namespace holds a few)");
  std::vector<T*> out;
  for (nl_object* o = ::nl_cache_get_first(cache); o; o = ::nl_cache_get_next(o))
    out.push_back(reinterpret_cast<T*>(o));
  return out;
}

std::string ipv4_text(nl_addr* a) {
  if (!a || ::nl_addr_get_family(a) != AF_INET || ::nl_addr_get_len(a) != 4) return {};
  char buf[INET_ADDRSTRLEN];
  ::inet_ntop(AF_INET, ::nl_addr_get_binary_addr(a), buf, sizeof buf);
  return buf;
}

std::string ipv6_text(nl_addr* a) {
  if (!a || ::nl_addr_get_family(a) != AF_INET6 || ::nl_addr_get_len(a) != 16) return {};
  char buf[INET6_ADDRSTRLEN];
  ::inet_ntop(AF_INET6, ::nl_addr_get_binary_addr(a), buf, sizeof buf);
  return buf;
}

// Adds `line` to `list` (NetnsLink::not_carried), which ends with a count past its bound.
void note_not_carried(std::vector<std::string>& list, std::string line) {
  if (list.size() + 1 < netns::kMaxNotCarried) {
    list.push_back(std::move(line));
  } else if (list.size() + 1 == netns::kMaxNotCarried) {
    list.push_back("1 more");
  } else {
    list.back() = std::to_string(std::stoul(list.back()) + 1) + " more";
  }
}

std::string link_name(rtnl_link* l) {
  const char* n = ::rtnl_link_get_name(l);
  return n ? n : "?";
}

// The qdisc that takes what arrives on `ifindex` (tc's "ingress", handle ffff:).
Qdisc ingress_qdisc(int ifindex) {
  Qdisc q(::rtnl_qdisc_alloc());
  if (!q) throw Error(ErrorKind::kInternal, "netlink: out of memory");
  ::rtnl_tc_set_ifindex(tc(q.get()), ifindex);
  ::rtnl_tc_set_parent(tc(q.get()), TC_H_INGRESS);
  ::rtnl_tc_set_handle(tc(q.get()), TC_HANDLE(0xffff, 0));
  ::rtnl_tc_set_kind(tc(q.get()), "ingress");
  return q;
}

// Adds the ingress qdisc of `ifindex` (what its filters act on); refuses a device that has one.
void add_ingress(nl_sock* s, int ifindex, const std::string& what) {
  if (int e = ::rtnl_qdisc_add(s, ingress_qdisc(ifindex).get(), NLM_F_CREATE | NLM_F_EXCL); e < 0)
    nl_fail(what + ": adding an ingress qdisc" + (e == -NLE_EXIST ? " (it has one already)" : ""),
            e);
}

// Every frame arriving on `from` (its ingress qdisc) leaves through `to` instead, so the
// namespace's stack never sees it: a u32 filter matching everything (u32, not matchall: every
// kernel with tc filters has it; one zero key under a zero mask matches any frame) whose action
// is a mirred egress redirect.
void add_redirect(nl_sock* s, int from, int to, const std::string& what) {
  Cls c(::rtnl_cls_alloc());
  Act a(::rtnl_act_alloc());
  if (!c || !a) throw Error(ErrorKind::kInternal, what + ": netlink: out of memory");
  ::rtnl_tc_set_ifindex(tc(c.get()), from);
  ::rtnl_tc_set_parent(tc(c.get()), TC_HANDLE(0xffff, 0));
  int e = ::rtnl_tc_set_kind(tc(c.get()), "u32");
  ::rtnl_cls_set_prio(c.get(), 1);
  ::rtnl_cls_set_protocol(c.get(), ETH_P_ALL);
  if (e >= 0) e = ::rtnl_u32_add_key_uint32(c.get(), 0, 0, 0, 0);
  if (e >= 0) e = ::rtnl_u32_set_cls_terminal(c.get());
  if (e >= 0) e = ::rtnl_tc_set_kind(tc(a.get()), "mirred");
  if (e >= 0) e = ::rtnl_mirred_set_action(a.get(), TCA_EGRESS_REDIR);
  if (e >= 0) e = ::rtnl_mirred_set_policy(a.get(), TC_ACT_STOLEN);
  if (e >= 0) e = ::rtnl_mirred_set_ifindex(a.get(), uint32_t(to));
  if (e >= 0) e = ::rtnl_u32_add_action(c.get(), a.get());  // takes a reference of its own
  if (e < 0) nl_fail(what + ": building the filter", e);
  if (e = ::rtnl_cls_add(s, c.get(), NLM_F_CREATE | NLM_F_EXCL); e < 0)
    nl_fail(what + ": adding a u32 filter with a mirred action" +
                (e == -NLE_OBJ_NOTFOUND || e == -NLE_OPNOTSUPP
                     ? " (does the kernel have cls_u32 and act_mirred?)"
                     : ""),
            e);
}

// Once the tap is gone (no VM has it open any more): the interface's redirect removed, its
// address and routes back. Nothing while the tap is there, or when `info`'s interface is not.
void restore_if_ended(const std::string& where, const NetnsLink& info, rtnl_addr* address,
                      const std::vector<Route>& routes) {
  Sock s = route_socket(where);
  rtnl_link* raw = nullptr;
  if (::rtnl_link_get_kernel(s.get(), info.tap_index, nullptr, &raw) >= 0) {
    Link still(raw);
    if (link_name(still.get()) == info.tap) return;  // a VM still has it
  }
  if (::rtnl_link_get_kernel(s.get(), info.interface_index, nullptr, &raw) < 0) return;
  Link interface(raw);
  if (link_name(interface.get()) != info.interface) return;
  (void)::rtnl_qdisc_delete(s.get(), ingress_qdisc(info.interface_index).get());
  (void)::rtnl_addr_add(s.get(), address, NLM_F_CREATE);
  for (const Route& r : routes) (void)::rtnl_route_add(s.get(), r.get(), NLM_F_CREATE);
}

// An IPv4 address with a prefix length, for libnl; throws naming `what` for anything else.
nl_addr* ipv4_addr(const std::string& text, unsigned prefix, const std::string& what) {
  in_addr a{};
  if (prefix > 32 || ::inet_pton(AF_INET, text.c_str(), &a) != 1)
    throw Error(ErrorKind::kInvalidArgument,
                what + ": \"" + text.substr(0, 40) + "\" is not an IPv4 address");
  nl_addr* n = ::nl_addr_build(AF_INET, &a, sizeof a);
  if (!n) throw Error(ErrorKind::kInternal, "netlink: out of memory");
  ::nl_addr_set_prefixlen(n, int(prefix));
  return n;
}

using nlohmann::json;

}  // namespace

struct NetnsTap::Impl {
  std::filesystem::path path;
  std::string where;  // "network namespace PATH", for messages
  UniqueFd ns;
  UniqueFd tap;
  NetnsLink info;
  // What setup() removed from the interface, put back by restore().
  Addr address;
  std::vector<Route> routes;

  void setup();
  void restore_if_ended() noexcept;
  // The interface the guest takes over: the only one up besides loopback.
  rtnl_link* pick_interface(nl_cache* links);
  void read_address(nl_sock* s);
  void read_routes(nl_sock* s);
  void read_route(rtnl_route* r, int family);
  void make_tap(nl_sock* s);
};

rtnl_link* NetnsTap::Impl::pick_interface(nl_cache* links) {
  std::vector<rtnl_link*> up;
  std::string found;
  for (rtnl_link* l : items<rtnl_link>(links, netns::kMaxLinks, where + ": interfaces")) {
    const std::string name = link_name(l);
    const unsigned flags = ::rtnl_link_get_flags(l);
    if (name.rfind(netns::kTapPrefix, 0) == 0)
      throw Error(ErrorKind::kInvalidArgument,
                  where + " already has img2vm's tap device " + name +
                      ": another VM uses it (a namespace serves one VM)");
    found += (found.empty() ? "" : ", ") + name + ((flags & IFF_UP) ? "" : " (down)");
    if ((flags & IFF_LOOPBACK) || !(flags & IFF_UP)) continue;
    up.push_back(l);
  }
  if (up.size() != 1)
    throw Error(ErrorKind::kInvalidArgument,
                where +
                    (up.empty() ? " has no interface up besides loopback"
                                : " has " + std::to_string(up.size()) +
                                      " interfaces up besides loopback (a VM takes one)") +
                    "; found: " + (found.empty() ? "none" : found));
  return up.front();
}

void NetnsTap::Impl::read_address(nl_sock* s) {
  nl_cache* raw = nullptr;
  if (int e = ::rtnl_addr_alloc_cache(s, &raw); e < 0) nl_fail(where + ": reading addresses", e);
  Cache cache(raw);
  std::vector<rtnl_addr*> mine;
  for (rtnl_addr* a : items<rtnl_addr>(cache.get(), netns::kMaxAddresses, where + ": addresses")) {
    if (::rtnl_addr_get_ifindex(a) != info.interface_index) continue;
    if (::rtnl_addr_get_family(a) == AF_INET) mine.push_back(a);
    if (::rtnl_addr_get_family(a) != AF_INET6 || ::rtnl_addr_get_scope(a) >= RT_SCOPE_LINK)
      continue;
    NetnsAddress six{ipv6_text(::rtnl_addr_get_local(a)), unsigned(::rtnl_addr_get_prefixlen(a))};
    if (six.address.empty() || six.prefix_length > 128) continue;
    if (info.addresses6.size() < netns::kMaxCarriedAddresses6)
      info.addresses6.push_back(six);
    else
      note_not_carried(info.not_carried,
                       "IPv6 address " + six.address + "/" + std::to_string(six.prefix_length));
  }
  if (mine.empty())
    throw Error(ErrorKind::kInvalidArgument,
                where + ": " + info.interface +
                    " has no IPv4 address (a VM takes an IPv4 network; IPv6 alone is not "
                    "supported)");
  if (mine.size() > 1) {
    std::string list;
    for (rtnl_addr* a : mine)
      list += (list.empty() ? "" : ", ") + ipv4_text(::rtnl_addr_get_local(a)) + "/" +
              std::to_string(::rtnl_addr_get_prefixlen(a));
    throw Error(ErrorKind::kInvalidArgument, where + ": " + info.interface + " has " +
                                                 std::to_string(mine.size()) + " IPv4 addresses (" +
                                                 list + "); a VM takes one");
  }
  info.address = ipv4_text(::rtnl_addr_get_local(mine[0]));
  info.prefix_length = unsigned(::rtnl_addr_get_prefixlen(mine[0]));
  if (info.address.empty() || info.prefix_length > 32)
    throw Error(ErrorKind::kInvalidArgument,
                where + ": " + info.interface + ": its IPv4 address cannot be read");
  address.reset(reinterpret_cast<rtnl_addr*>(::nl_object_clone(obj(mine[0]))));
  if (!address) throw Error(ErrorKind::kInternal, where + ": netlink: out of memory");
}

// The default gateway, and the routes through the interface that go when its address does
// (all but the kernel's own, which come back with the address), kept for restore(); then the
// IPv6 routes. Those the guest gets go to info.routes.
void NetnsTap::Impl::read_routes(nl_sock* s) {
  for (int family : {AF_INET, AF_INET6}) {
    nl_cache* raw = nullptr;
    if (int e = ::rtnl_route_alloc_cache(s, family, 0, &raw); e < 0)
      nl_fail(where + ": reading routes", e);
    Cache cache(raw);
    for (rtnl_route* r : items<rtnl_route>(cache.get(), netns::kMaxRoutes, where + ": routes"))
      read_route(r, family);
  }
}

void NetnsTap::Impl::read_route(rtnl_route* r, int family) {
  // A kernel without IPv6 (ipv6.disable=1) answers the IPv6 dump with every family's routes.
  if (::rtnl_route_get_family(r) != family || ::rtnl_route_get_table(r) != RT_TABLE_MAIN) return;
  auto text = [family](nl_addr* a) { return family == AF_INET ? ipv4_text(a) : ipv6_text(a); };
  int hops = 0;
  std::string gateway;
  for (int i = 0; i < ::rtnl_route_get_nnexthops(r); ++i) {
    rtnl_nexthop* nh = ::rtnl_route_nexthop_n(r, i);
    if (::rtnl_route_nh_get_ifindex(nh) != info.interface_index) continue;
    if (++hops == 1) gateway = text(::rtnl_route_nh_get_gateway(nh));
  }
  if (hops == 0) return;
  nl_addr* dst = ::rtnl_route_get_dst(r);
  const unsigned prefix = dst ? unsigned(::nl_addr_get_prefixlen(dst)) : 0;
  const bool unicast = ::rtnl_route_get_type(r) == RTN_UNICAST;
  const bool ipv4_default = family == AF_INET && unicast && prefix == 0;
  if (ipv4_default && info.gateway.empty()) info.gateway = gateway;
  if (::rtnl_route_get_protocol(r) == RTPROT_KERNEL) return;
  if (family == AF_INET) {
    Route copy(reinterpret_cast<rtnl_route*>(::nl_object_clone(obj(r))));
    if (!copy) throw Error(ErrorKind::kInternal, where + ": netlink: out of memory");
    routes.push_back(std::move(copy));
  }
  if (!unicast || ipv4_default) return;
  NetnsRoute carried{prefix == 0 ? (family == AF_INET ? "0.0.0.0" : "::") : text(dst), prefix,
                     gateway};
  const std::string line = std::string(family == AF_INET ? "IPv4" : "IPv6") + " route " +
                           carried.destination + "/" + std::to_string(prefix);
  if (carried.destination.empty()) return;
  if (hops > 1)
    note_not_carried(info.not_carried, line + ": " + std::to_string(hops) + " next hops");
  else if (info.routes.size() >= netns::kMaxCarriedRoutes)
    note_not_carried(info.not_carried, line);
  else
    info.routes.push_back(std::move(carried));
}

// The tap device, up, with the interface's MTU and no IPv6 (the namespace's kernel would send
// router solicitations and reports to the guest).
void NetnsTap::Impl::make_tap(nl_sock* s) {
  tap.reset(::open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK));
  if (!tap)
    throw Error(ErrorKind::kNotFound,
                where + ": cannot open /dev/net/tun: " + std::strerror(errno));
  ifreq r{};
  const std::string pattern = std::string(netns::kTapPrefix) + "%d";
  std::memcpy(r.ifr_name, pattern.c_str(), pattern.size() + 1);
  r.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  if (::ioctl(tap.get(), TUNSETIFF, &r) != 0) {
    int e = errno;
    throw Error(ErrorKind::kIo, where + ": cannot create a tap device: " + std::strerror(e) +
                                    (e == EPERM ? " (needs CAP_NET_ADMIN in it: root)" : ""));
  }
  info.tap = r.ifr_name;
  rtnl_link* raw = nullptr;
  if (int e = ::rtnl_link_get_kernel(s, 0, info.tap.c_str(), &raw); e < 0)
    nl_fail(where + ": reading tap device " + info.tap, e);
  Link link(raw);
  info.tap_index = ::rtnl_link_get_ifindex(link.get());
  {
    // Per thread: /proc/sys/net is the namespace of the thread that opens it.
    const std::string knob = "/proc/sys/net/ipv6/conf/" + info.tap + "/disable_ipv6";
    UniqueFd f(::open(knob.c_str(), O_WRONLY | O_CLOEXEC));
    if (f && ::write(f.get(), "1", 1) != 1)
      throw Error(ErrorKind::kIo,
                  where + ": cannot switch IPv6 off on " + info.tap + ": " + std::strerror(errno));
  }
  Link change(::rtnl_link_alloc());
  if (!change) throw Error(ErrorKind::kInternal, where + ": netlink: out of memory");
  ::rtnl_link_set_mtu(change.get(), info.mtu);
  ::rtnl_link_set_flags(change.get(), IFF_UP);
  if (int e = ::rtnl_link_change(s, link.get(), change.get(), 0); e < 0)
    nl_fail(where + ": bringing " + info.tap + " up with MTU " + std::to_string(info.mtu), e);
}

void NetnsTap::Impl::setup() {
  Sock s = route_socket(where);
  {
    nl_cache* raw = nullptr;
    if (int e = ::rtnl_link_alloc_cache(s.get(), AF_UNSPEC, &raw); e < 0)
      nl_fail(where + ": reading interfaces", e);
    Cache links(raw);
    rtnl_link* l = pick_interface(links.get());
    info.interface = link_name(l);
    info.interface_index = ::rtnl_link_get_ifindex(l);
    info.mtu = ::rtnl_link_get_mtu(l);
    nl_addr* mac = ::rtnl_link_get_addr(l);
    if (::rtnl_link_get_arptype(l) != ARPHRD_ETHER || !mac || ::nl_addr_get_len(mac) != 6)
      throw Error(ErrorKind::kInvalidArgument,
                  where + ": " + info.interface +
                      " is not an Ethernet interface (a VM's NIC takes a veth's place)");
    std::memcpy(info.mac.data(), ::nl_addr_get_binary_addr(mac), 6);
    if (info.mtu < 68 || info.mtu > 65535)
      throw Error(ErrorKind::kInvalidArgument, where + ": " + info.interface + ": MTU " +
                                                   std::to_string(info.mtu) + " is not usable");
  }
  read_address(s.get());
  read_routes(s.get());
  make_tap(s.get());
  // Guest to interface first (the tap's qdisc and filter go with the tap), then interface to
  // guest; from then on the interface's own qdisc is ours to remove when a later step fails.
  const std::string to_interface = where + ": redirecting " + info.tap + " to " + info.interface;
  add_ingress(s.get(), info.tap_index, to_interface);
  add_redirect(s.get(), info.tap_index, info.interface_index, to_interface);
  const std::string to_tap = where + ": redirecting " + info.interface + " to " + info.tap;
  add_ingress(s.get(), info.interface_index, to_tap);
  try {
    add_redirect(s.get(), info.interface_index, info.tap_index, to_tap);
    if (int e = ::rtnl_addr_delete(s.get(), address.get(), 0); e < 0)
      nl_fail(where + ": removing " + info.address + " from " + info.interface, e);
  } catch (...) {
    (void)::rtnl_qdisc_delete(s.get(), ingress_qdisc(info.interface_index).get());
    throw;
  }
}

void NetnsTap::Impl::restore_if_ended() noexcept {
  try {
    vm::restore_if_ended(where, info, address.get(), routes);
  } catch (...) {
  }
}

NetnsTap::NetnsTap(const std::filesystem::path& netns_path) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.path = netns_path;
  m.where = "network namespace " + netns_path.string();
  m.ns.reset(::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!m.ns) throw Error(ErrorKind::kNotFound, m.where + ": " + std::strerror(errno));
  if (::ioctl(m.ns.get(), NS_GET_NSTYPE) != CLONE_NEWNET)
    throw Error(ErrorKind::kInvalidArgument, m.where + ": not a network namespace");
  in_netns(m.ns.get(), m.where, [&] { m.setup(); });
}

NetnsTap::~NetnsTap() {
  impl_->tap.reset();
  try {
    in_netns(impl_->ns.get(), impl_->where, [this] { impl_->restore_if_ended(); });
  } catch (...) {
  }
}

const NetnsLink& NetnsTap::info() const noexcept { return impl_->info; }
int NetnsTap::device_fd() const noexcept { return impl_->tap.get(); }

// The routes as their destination, table, protocol, scope, type and metric, and each next hop
// as its interface and gateway: what the kernel needs to put them back.
std::string NetnsTap::restore_state() const {
  const Impl& m = *impl_;
  json routes = json::array();
  for (const Route& r : m.routes) {
    nl_addr* dst = ::rtnl_route_get_dst(r.get());
    json hops = json::array();
    for (int i = 0; i < ::rtnl_route_get_nnexthops(r.get()); ++i) {
      rtnl_nexthop* nh = ::rtnl_route_nexthop_n(r.get(), i);
      hops.push_back({{"ifindex", ::rtnl_route_nh_get_ifindex(nh)},
                      {"gateway", ipv4_text(::rtnl_route_nh_get_gateway(nh))}});
    }
    const std::string d = ipv4_text(dst);
    routes.push_back({{"dst", d.empty() ? "0.0.0.0" : d},
                      {"dst_len", d.empty() ? 0 : ::nl_addr_get_prefixlen(dst)},
                      {"table", ::rtnl_route_get_table(r.get())},
                      {"protocol", ::rtnl_route_get_protocol(r.get())},
                      {"scope", ::rtnl_route_get_scope(r.get())},
                      {"type", ::rtnl_route_get_type(r.get())},
                      {"priority", ::rtnl_route_get_priority(r.get())},
                      {"nexthops", hops}});
  }
  json j = {{"netns", m.path.string()},
            {"interface", m.info.interface},
            {"interface_index", m.info.interface_index},
            {"tap", m.info.tap},
            {"tap_index", m.info.tap_index},
            {"address", m.info.address},
            {"prefix_length", m.info.prefix_length},
            {"broadcast", ipv4_text(::rtnl_addr_get_broadcast(m.address.get()))},
            {"routes", routes}};
  return j.dump();
}

bool netns_has_vm(const std::filesystem::path& netns_path) noexcept {
  try {
    const std::string where = "network namespace " + netns_path.string();
    UniqueFd ns(::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns || ::ioctl(ns.get(), NS_GET_NSTYPE) != CLONE_NEWNET) return false;
    bool found = false;
    in_netns(ns.get(), where, [&] {
      Sock s = route_socket(where);
      nl_cache* raw = nullptr;
      if (int e = ::rtnl_link_alloc_cache(s.get(), AF_UNSPEC, &raw); e < 0)
        nl_fail(where + ": reading interfaces", e);
      Cache links(raw);
      for (rtnl_link* l : items<rtnl_link>(links.get(), netns::kMaxLinks, where + ": interfaces"))
        if (link_name(l).rfind(netns::kTapPrefix, 0) == 0) found = true;
    });
    return found;
  } catch (...) {
    return false;
  }
}

std::string restore_netns(std::string_view state) noexcept {
  std::string where = "a network namespace";
  try {
    const json j = json::parse(state);
    const std::filesystem::path netns_path = j.at("netns").get<std::string>();
    where = "network namespace " + netns_path.string();
    NetnsLink info;
    info.interface = j.at("interface").get<std::string>();
    info.interface_index = j.at("interface_index").get<int>();
    info.tap = j.at("tap").get<std::string>();
    info.tap_index = j.at("tap_index").get<int>();
    Addr address(::rtnl_addr_alloc());
    if (!address) throw Error(ErrorKind::kInternal, "netlink: out of memory");
    const unsigned prefix = j.at("prefix_length").get<unsigned>();
    ::rtnl_addr_set_ifindex(address.get(), info.interface_index);
    ::rtnl_addr_set_family(address.get(), AF_INET);
    nl_addr* local = ipv4_addr(j.at("address").get<std::string>(), prefix, "address");
    int e = ::rtnl_addr_set_local(address.get(), local);
    ::nl_addr_put(local);
    if (e < 0) nl_fail(where + ": address", e);
    ::rtnl_addr_set_prefixlen(address.get(), int(prefix));
    if (const std::string b = j.at("broadcast").get<std::string>(); !b.empty()) {
      nl_addr* bc = ipv4_addr(b, 32, "broadcast");
      e = ::rtnl_addr_set_broadcast(address.get(), bc);
      ::nl_addr_put(bc);
      if (e < 0) nl_fail(where + ": broadcast address", e);
    }
    std::vector<Route> routes;
    for (const json& r : j.at("routes")) {
      if (routes.size() >= netns::kMaxRoutes) break;
      Route route(::rtnl_route_alloc());
      if (!route) throw Error(ErrorKind::kInternal, "netlink: out of memory");
      ::rtnl_route_set_family(route.get(), AF_INET);
      nl_addr* dst =
          ipv4_addr(r.at("dst").get<std::string>(), r.at("dst_len").get<unsigned>(), "route");
      e = ::rtnl_route_set_dst(route.get(), dst);
      ::nl_addr_put(dst);
      if (e < 0) nl_fail(where + ": route", e);
      ::rtnl_route_set_table(route.get(), r.at("table").get<uint32_t>());
      ::rtnl_route_set_protocol(route.get(), r.at("protocol").get<uint8_t>());
      ::rtnl_route_set_scope(route.get(), r.at("scope").get<uint8_t>());
      (void)::rtnl_route_set_type(route.get(), r.at("type").get<uint8_t>());
      ::rtnl_route_set_priority(route.get(), r.at("priority").get<uint32_t>());
      for (const json& h : r.at("nexthops")) {
        rtnl_nexthop* nh = ::rtnl_route_nh_alloc();
        if (!nh) throw Error(ErrorKind::kInternal, "netlink: out of memory");
        ::rtnl_route_nh_set_ifindex(nh, h.at("ifindex").get<int>());
        if (const std::string g = h.at("gateway").get<std::string>(); !g.empty()) {
          nl_addr* gw = ipv4_addr(g, 32, "gateway");
          ::rtnl_route_nh_set_gateway(nh, gw);
          ::nl_addr_put(gw);
        }
        ::rtnl_route_add_nexthop(route.get(), nh);  // the route owns it now
      }
      routes.push_back(std::move(route));
    }
    UniqueFd ns(::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns) return where + ": " + std::strerror(errno);
    if (::ioctl(ns.get(), NS_GET_NSTYPE) != CLONE_NEWNET)
      return where + ": not a network namespace";
    in_netns(ns.get(), where, [&] { restore_if_ended(where, info, address.get(), routes); });
    return "";
  } catch (const std::exception& e) {
    return where + ": restoring it: " + e.what();
  }
}

}  // namespace img2vm::vm
