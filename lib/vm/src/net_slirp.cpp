#include "img2vm/vm/net_slirp.hpp"

#include <arpa/inet.h>
#include <libslirp.h>
#include <netinet/in.h>
#include <poll.h>
#include <seccomp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <list>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "net_filter.hpp"

namespace img2vm::vm {

namespace {

in_addr ip4(std::string_view s) {
  in_addr a{};
  std::string str(s);
  if (::inet_pton(AF_INET, str.c_str(), &a) != 1)
    throw Error(ErrorKind::kInternal, "bad address " + str);
  return a;
}

int64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// libslirp's poll events and poll(2)'s, bit for bit.
constexpr std::pair<int, short> kPollEvents[] = {{SLIRP_POLL_IN, POLLIN},
                                                 {SLIRP_POLL_OUT, POLLOUT},
                                                 {SLIRP_POLL_PRI, POLLPRI},
                                                 {SLIRP_POLL_ERR, POLLERR},
                                                 {SLIRP_POLL_HUP, POLLHUP}};

short to_poll(int slirp_events) {
  short e = 0;
  for (auto [slirp_bit, poll_bit] : kPollEvents)
    if (slirp_events & slirp_bit) e |= poll_bit;
  return e;
}

int from_poll(short revents) {
  int e = 0;
  for (auto [slirp_bit, poll_bit] : kPollEvents)
    if (revents & poll_bit) e |= slirp_bit;
  return e;
}

// A host socket address for a forward's host side (IPv4 or IPv6).
struct HostAddr {
  sockaddr_storage ss{};
  socklen_t len = 0;
  bool v6 = false;
};

HostAddr host_addr(const PortForward& f, uint16_t port) {
  HostAddr h;
  if (f.host_ip.find(':') != std::string::npos) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&h.ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    if (::inet_pton(AF_INET6, f.host_ip.c_str(), &a->sin6_addr) != 1)
      throw Error(ErrorKind::kInvalidArgument,
                  "\"" + f.host_ip + "\" is not a numeric IPv6 address");
    h.len = sizeof(sockaddr_in6);
    h.v6 = true;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&h.ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    if (::inet_pton(AF_INET, f.host_ip.c_str(), &a->sin_addr) != 1)
      throw Error(ErrorKind::kInvalidArgument,
                  "\"" + f.host_ip + "\" is not a numeric IPv4 address");
    h.len = sizeof(sockaddr_in);
  }
  return h;
}

// A free host port for a forward given without one: bound once to port 0 and released. Another
// process could take it before libslirp binds it; that then fails as "already in use".
uint16_t pick_free_port(const PortForward& f) {
  HostAddr h = host_addr(f, 0);
  UniqueFd s(::socket(h.v6 ? AF_INET6 : AF_INET,
                      (f.protocol == PortProtocol::kUdp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC,
                      0));
  if (!s) throw_errno("socket");
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&h.ss), h.len) != 0)
    throw_errno("cannot find a free host port on " + f.host_ip);
  sockaddr_storage got{};
  socklen_t len = sizeof got;
  if (::getsockname(s.get(), reinterpret_cast<sockaddr*>(&got), &len) != 0)
    throw_errno("getsockname");
  return ntohs(h.v6 ? reinterpret_cast<sockaddr_in6*>(&got)->sin6_port
                    : reinterpret_cast<sockaddr_in*>(&got)->sin_port);
}

}  // namespace

struct SlirpBackend::Impl {
  struct Timer {
    SlirpTimerId id{};
    SlirpTimerCb cb = nullptr;  // timer_new style; else slirp_handle_timer(id)
    void* cb_opaque = nullptr;
    int64_t expire_ms = -1;  // -1: not armed
  };

  // Every call into libslirp holds this one mutex, shared by all instances in the process:
  // libslirp keeps some state in globals (its clock, the cached DNS address).
  std::mutex& mu = global_mutex();
  static std::mutex& global_mutex() {
    static std::mutex m;
    return m;
  }
  Slirp* slirp = nullptr;
  SlirpCb callbacks{};
  std::list<Timer> timers;
  std::vector<pollfd> pfds;  // built by run() and slirp's add_poll callback
  std::atomic<NetDeviceSide*> device{nullptr};
  std::atomic<bool> delivered{false};             // frames went to the device since the last flush
  std::atomic<std::thread::id> loop_thread{};     // the thread in run()
  UniqueFd wake;                                  // eventfd: slirp's notify, rx_ready()
  std::unique_ptr<detail::UserNetFilter> filter;  // outbound / host_loopback (net_filter.hpp)
  std::vector<uint8_t> reply;
  std::vector<PortForward> published;
  // Added to libslirp's clock while the name server is read in advance (prime_dns).
  std::atomic<int64_t> clock_offset_ns{0};

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  // Also when the constructor throws (a port in use) after slirp_new.
  ~Impl() {
    if (slirp) {
      std::lock_guard lk(mu);
      slirp_cleanup(slirp);
    }
  }

  static Impl* self(void* opaque) { return static_cast<Impl*>(opaque); }

  void kick() {
    uint64_t one = 1;
    (void)!::write(wake.get(), &one, sizeof one);
  }

  // libslirp keeps its clock in a global that only slirp_pollfds_poll sets, and a UDP socket
  // opened by slirp_input takes its expiry from it. Before the loop's first round that clock is
  // zero, so such a socket counts as long expired at the next round and is closed before the
  // answer to the guest's datagram arrives (a guest's first DNS query, sent early, would be lost).
  // A poll that reports an error and no events sets the clock, runs due slirp timers and
  // touches no socket. Called with `mu` held.
  void refresh_clock() {
    slirp_pollfds_poll(
        slirp, 1, [](int, void*) { return 0; }, nullptr);
  }

  void prime_dns();

  // Arms: earliest expiry relative to now, in ms (UINT32_MAX: none).
  uint32_t next_timer_ms(int64_t now_ms) const {
    uint32_t t = UINT32_MAX;
    for (const auto& tm : timers) {
      if (tm.expire_ms < 0) continue;
      int64_t d = tm.expire_ms - now_ms;
      t = std::min<uint32_t>(t, d <= 0 ? 0u : uint32_t(std::min<int64_t>(d, INT_MAX)));
    }
    return t;
  }

  void fire_timers(int64_t now_ms) {
    // Copied first: a timer's callback may re-arm or free timers.
    std::vector<Timer> due;
    for (auto& tm : timers) {
      if (tm.expire_ms < 0 || tm.expire_ms > now_ms) continue;
      tm.expire_ms = -1;
      due.push_back(tm);
    }
    for (const Timer& tm : due) {
      if (tm.cb)
        tm.cb(tm.cb_opaque);
      else
        slirp_handle_timer(slirp, tm.id, tm.cb_opaque);
    }
  }
};

// libslirp forwards the guest's DNS queries to the first name server of /etc/resolv.conf, which
// it reads when a query comes and keeps process-wide: for a second without looking at the file,
// then for as long as stat() says the file is unchanged (device, inode, size, mtime). The first
// read stats nothing, so the file is read twice before only stat() is needed. Both reads
// happen here, on a short-lived thread, so that the network thread never opens a file (its
// filter refuses open): two queries from the source-only address 0.0.0.0 (libslirp answers
// those with no ICMP error) to 10.0.2.3:53, the second one libslirp's cache time later by its
// clock (offset, not waited for). The thread's own filter makes sendto fail, so libslirp reads
// the name server but no datagram leaves; the socket it opened is then expired by the same
// clock. Called with `mu` held (the calling thread waits for this one).
void SlirpBackend::Impl::prime_dns() {
  constexpr int64_t kMs = 1000000;
  constexpr int64_t kDnsCacheMs = 1000;     // libslirp's TIMEOUT_DEFAULT
  constexpr int64_t kUdpExpireMs = 240000;  // libslirp's SO_EXPIRE for an idle UDP socket
  // Ethernet, IPv4 0.0.0.0 -> 10.0.2.3, UDP port 1 -> 53 with no payload and no checksum.
  std::vector<uint8_t> frame(14 + 20 + 8, 0);
  frame[12] = 0x08;
  uint8_t* iph = frame.data() + 14;
  iph[0] = 0x45;
  iph[3] = 28;
  iph[8] = 64;
  iph[9] = 17;
  const uint32_t dns = ntohl(ip4(usernet::kDns).s_addr);
  for (int i = 0; i < 4; ++i) iph[16 + i] = uint8_t(dns >> (24 - 8 * i));
  uint32_t sum = 0;
  for (int i = 0; i < 20; i += 2) sum += uint32_t(iph[i] << 8 | iph[i + 1]);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  iph[10] = uint8_t(~sum >> 8);
  iph[11] = uint8_t(~sum);
  uint8_t* udp = iph + 20;
  udp[1] = 1;
  udp[3] = 53;
  udp[5] = 8;

  std::thread t([&] {
    std::unique_ptr<void, decltype(&seccomp_release)> ctx(seccomp_init(SCMP_ACT_ALLOW),
                                                          &seccomp_release);
    if (!ctx) return;
    for (int nr : {SCMP_SYS(sendto), SCMP_SYS(sendmsg), SCMP_SYS(sendmmsg)})
      if (seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), nr, 0) != 0) return;
    if (seccomp_load(ctx.get()) != 0) return;
    refresh_clock();
    slirp_input(slirp, frame.data(), int(frame.size()));
    clock_offset_ns += (kDnsCacheMs + 1) * kMs;
    refresh_clock();
    slirp_input(slirp, frame.data(), int(frame.size()));
    clock_offset_ns += (kUdpExpireMs + 1) * kMs;
    refresh_clock();
    uint32_t timeout = UINT32_MAX;
    slirp_pollfds_fill(
        slirp, &timeout, [](int, int, void*) { return -1; }, nullptr);
    clock_offset_ns = 0;
    refresh_clock();
  });
  t.join();
}

SlirpBackend::SlirpBackend(const UserNetConfig& config, uint16_t mtu)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  if (mtu < 576 || mtu > 65520)
    throw Error(ErrorKind::kInvalidArgument,
                "user-mode networking needs an MTU from 576 to 65520, not " + std::to_string(mtu));
  m.wake.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!m.wake) throw_errno("eventfd");

  auto& cb = m.callbacks;
  cb.send_packet = [](const void* buf, size_t len, void* opaque) -> ssize_t {
    Impl* s = Impl::self(opaque);
    s->filter->note_to_guest({static_cast<const uint8_t*>(buf), len});
    if (NetDeviceSide* dev = s->device.load()) {
      if (dev->receive({static_cast<const uint8_t*>(buf), len})) s->delivered = true;
    }
    return ssize_t(len);  // a dropped frame is not an error to slirp (TCP retransmits)
  };
  cb.guest_error = [](const char*, void*) {};  // the guest's own mistakes: not ours to print
  cb.clock_get_ns = [](void* opaque) -> int64_t {
    return now_ns() + Impl::self(opaque)->clock_offset_ns.load();
  };
  cb.timer_new = [](SlirpTimerCb fn, void* cb_opaque, void* opaque) -> void* {
    Impl::Timer t;
    t.cb = fn;
    t.cb_opaque = cb_opaque;
    return &Impl::self(opaque)->timers.emplace_back(t);
  };
  cb.timer_new_opaque = [](SlirpTimerId id, void* cb_opaque, void* opaque) -> void* {
    Impl::Timer t;
    t.id = id;
    t.cb_opaque = cb_opaque;
    return &Impl::self(opaque)->timers.emplace_back(t);
  };
  cb.timer_free = [](void* timer, void* opaque) {
    Impl::self(opaque)->timers.remove_if([timer](const Impl::Timer& t) { return &t == timer; });
  };
  cb.timer_mod = [](void* timer, int64_t expire_ms, void*) {
    static_cast<Impl::Timer*>(timer)->expire_ms = expire_ms;
  };
  cb.register_poll_fd = [](int, void*) {};  // run() asks slirp for its fds on every round
  cb.unregister_poll_fd = [](int, void*) {};
  cb.notify = [](void* opaque) { Impl::self(opaque)->kick(); };
  cb.init_completed = [](Slirp*, void*) {};

  std::set<uint16_t> udp_ports;
  for (const PortForward& f : config.forwards)
    if (f.protocol == PortProtocol::kUdp) udp_ports.insert(f.guest_port);
  detail::UserNetFilter::Addresses addrs;
  addrs.network = ntohl(ip4(usernet::kNetwork).s_addr);
  addrs.prefix_length = usernet::kPrefixLength;
  addrs.gateway = ntohl(ip4(usernet::kGateway).s_addr);
  addrs.dns = ntohl(ip4(usernet::kDns).s_addr);
  m.filter = std::make_unique<detail::UserNetFilter>(config.outbound, config.host_loopback,
                                                     std::move(udp_ports), addrs);

  // libslirp's own "restricted" and "disable_host_loopback" stay off: the filter enforces
  // both (they would also stop published UDP ports from answering).
  ::SlirpConfig sc{};
  sc.version = 4;
  sc.restricted = 0;
  sc.in_enabled = true;
  sc.vnetwork = ip4(usernet::kNetwork);
  sc.vnetmask.s_addr = htonl(~((1u << (32 - usernet::kPrefixLength)) - 1));
  sc.vhost = ip4(usernet::kGateway);
  sc.in6_enabled = false;
  sc.vdhcp_start = ip4(usernet::kGuest);
  sc.vnameserver = ip4(usernet::kDns);
  sc.if_mtu = mtu;
  sc.if_mru = mtu;
  sc.disable_host_loopback = false;
  sc.enable_emu = false;
  sc.disable_dns = false;
  sc.disable_dhcp = false;
  std::lock_guard lk(m.mu);
  m.slirp = slirp_new(&sc, &m.callbacks, &m);
  if (!m.slirp) throw Error(ErrorKind::kInternal, "libslirp refused its configuration");
  m.prime_dns();

  const sockaddr_in guest = [] {
    sockaddr_in g{};
    g.sin_family = AF_INET;
    g.sin_addr = ip4(usernet::kGuest);
    return g;
  }();
  for (const PortForward& f : config.forwards) {
    PortForward bound = f;
    try {
      if (bound.host_port == 0) bound.host_port = pick_free_port(f);
    } catch (const Error& e) {
      throw e.with_context("cannot publish " + to_string(f));
    }
    if (bound.guest_port == 0)
      throw Error(ErrorKind::kInvalidArgument,
                  "cannot publish " + to_string(f) + ": no guest port");
    HostAddr h = host_addr(bound, bound.host_port);
    sockaddr_in g = guest;
    g.sin_port = htons(bound.guest_port);
    int flags = (f.protocol == PortProtocol::kUdp ? SLIRP_HOSTFWD_UDP : 0) |
                (h.v6 ? SLIRP_HOSTFWD_V6ONLY : 0);
    errno = 0;
    if (slirp_add_hostxfwd(m.slirp, reinterpret_cast<sockaddr*>(&h.ss), h.len,
                           reinterpret_cast<const sockaddr*>(&g), sizeof g, flags) < 0) {
      int err = errno;
      std::string what = "cannot publish " + to_string(bound) + ": ";
      if (err == EADDRINUSE)
        throw Error(ErrorKind::kInvalidArgument, what + "host port " +
                                                     std::to_string(bound.host_port) + "/" +
                                                     to_string(f.protocol) + " is already in use");
      if (err == EACCES)
        throw Error(ErrorKind::kInvalidArgument,
                    what + "permission denied for host port " + std::to_string(bound.host_port) +
                        " (ports below net.ipv4.ip_unprivileged_port_start need privilege)");
      if (err == EADDRNOTAVAIL)
        throw Error(ErrorKind::kInvalidArgument, what + "the host has no address " + f.host_ip);
      throw Error(ErrorKind::kIo, what + (err ? std::strerror(err) : "libslirp refused it"));
    }
    m.published.push_back(std::move(bound));
  }
}

SlirpBackend::~SlirpBackend() = default;

std::vector<PortForward> SlirpBackend::published() const { return impl_->published; }

void SlirpBackend::attach(NetDeviceSide* device) { impl_->device = device; }

void SlirpBackend::send(std::span<const uint8_t> frame) {
  if (frame.size() > INT_MAX) return;
  Impl& m = *impl_;
  std::lock_guard lk(m.mu);
  switch (m.filter->check_from_guest(frame, m.reply)) {
    case detail::UserNetFilter::Verdict::kPass:
      m.refresh_clock();
      slirp_input(m.slirp, frame.data(), int(frame.size()));
      break;
    case detail::UserNetFilter::Verdict::kRefuse:
      if (NetDeviceSide* dev = m.device.load()) {
        if (dev->receive(m.reply)) m.delivered = true;
      }
      break;
    case detail::UserNetFilter::Verdict::kDrop:
      break;
  }
  // From another thread, libslirp may have opened a socket or want to write: the loop must
  // rebuild its poll set now rather than at its next timeout.
  if (std::this_thread::get_id() != m.loop_thread.load()) m.kick();
}

void SlirpBackend::rx_ready() { impl_->kick(); }

void SlirpBackend::run(std::span<const Watch> watches) {
  Impl& m = *impl_;
  m.loop_thread = std::this_thread::get_id();
  auto add_poll = [](int fd, int events, void* opaque) -> int {
    auto& pfds = Impl::self(opaque)->pfds;
    pfds.push_back({fd, to_poll(events), 0});
    return int(pfds.size() - 1);
  };
  auto get_revents = [](int idx, void* opaque) -> int {
    auto& pfds = Impl::self(opaque)->pfds;
    return idx >= 0 && size_t(idx) < pfds.size() ? from_poll(pfds[size_t(idx)].revents) : 0;
  };
  for (;;) {
    m.pfds.clear();
    m.pfds.push_back({m.wake.get(), POLLIN, 0});
    for (const auto& w : watches) m.pfds.push_back({w.fd, POLLIN, 0});
    const size_t first_slirp = m.pfds.size();
    uint32_t timeout = UINT32_MAX;
    {
      std::lock_guard lk(m.mu);
      slirp_pollfds_fill(m.slirp, &timeout, add_poll, &m);
      timeout = std::min(timeout, m.next_timer_ms(now_ns() / 1000000));
    }
    // While the guest is not taking frames, stop reading host sockets (their data waits in
    // the kernel, TCP pushes back) instead of dropping what slirp would make of it.
    NetDeviceSide* dev = m.device.load();
    if (dev && dev->rx_full()) {
      for (size_t i = first_slirp; i < m.pfds.size(); ++i) {
        m.pfds[i].events &= short(POLLOUT);
        if (!m.pfds[i].events) m.pfds[i].fd = -1;
      }
    }
    int n = ::poll(m.pfds.data(), m.pfds.size(),
                   timeout == UINT32_MAX ? -1 : int(std::min<uint32_t>(timeout, INT_MAX)));
    const bool poll_failed = n < 0;
    if (!poll_failed && (m.pfds[0].revents & POLLIN)) {
      uint64_t v;
      (void)!::read(m.wake.get(), &v, sizeof v);
    }
    // libslirp first, while the poll results still match its sockets; the watches (the
    // guest's frames) may open and close sockets.
    {
      std::lock_guard lk(m.mu);
      slirp_pollfds_poll(m.slirp, poll_failed ? 1 : 0, get_revents, &m);
      m.fire_timers(now_ns() / 1000000);
    }
    if (!poll_failed) {
      for (size_t i = 0; i < watches.size(); ++i) {
        if (m.pfds[1 + i].revents & (POLLIN | POLLERR | POLLHUP)) {
          if (!watches[i].on_readable()) return;
        }
      }
    }
    if (m.delivered.exchange(false)) {
      if (NetDeviceSide* d = m.device.load()) d->flush_rx();
    }
  }
}

}  // namespace img2vm::vm
