// The host side of virtio-vsock (virtio_vsock.hpp): the listening unix socket, the CONNECT
// handshake, connections to `<uds_path>_<port>`, buffering towards either side, deadlines.
#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include "img2vm/base/error.hpp"
#include "virtio_vsock.hpp"

namespace img2vm::vm {

namespace {
using Clock = std::chrono::steady_clock;

// What a connection's path adds to the device's at most: `<uds_path>_<port>`.
constexpr std::string_view kLongestPortSuffix = "_4294967295";

bool to_sockaddr(const std::string& path, sockaddr_un& sa) {
  sa = {};
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sa.sun_path) return false;
  std::memcpy(sa.sun_path, path.data(), path.size());
  return true;
}

// `CONNECT <port>` (keyword in any case, one space, decimal port); nullopt otherwise.
std::optional<uint32_t> parse_connect(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  constexpr std::string_view kWord = "connect ";
  if (line.size() <= kWord.size() || line.size() > kWord.size() + 10) return std::nullopt;
  for (size_t i = 0; i < kWord.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(line[i])) != kWord[i]) return std::nullopt;
  uint64_t port = 0;
  for (char ch : line.substr(kWord.size())) {
    if (ch < '0' || ch > '9') return std::nullopt;
    port = port * 10 + unsigned(ch - '0');
  }
  if (port > UINT32_MAX) return std::nullopt;
  return uint32_t(port);
}
}  // namespace

VirtioVsock::VirtioVsock(uint64_t guest_cid, std::filesystem::path uds_path, size_t max_connections)
    : cid_(guest_cid),
      path_(std::move(uds_path)),
      max_conns_(std::min(max_connections, kMaxConnections)) {
  if (guest_cid <= kHostCid || guest_cid >= 0xffffffffull)
    throw Error(ErrorKind::kInvalidArgument, "vsock guest CID " + std::to_string(guest_cid) +
                                                 " is reserved (it must be 3 to 4294967294)");
  for (size_t i = 0; i < 8; ++i) config_[i] = uint8_t(guest_cid >> (8 * i));
  if (path_.empty()) {  // no host side: only the epoll set, which stays empty
    ep_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!ep_) throw_errno("vsock: epoll");
    return;
  }
  addr_.emplace(path_, kLongestPortSuffix.size());
  sockaddr_un sa;
  // The longest connection path, `<uds_path>_4294967295`, must fit as well.
  if (!to_sockaddr(std::string(addr_->text()) + std::string(kLongestPortSuffix), sa))
    throw Error(ErrorKind::kInvalidArgument,
                "vsock socket name '" + path_.filename().string() + "' is too long");
  listen_fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!listen_fd_) throw_errno("vsock: socket");
  if (::bind(listen_fd_.get(), addr_->get(), addr_->size()) != 0)
    throw_errno("vsock: cannot listen on " + path_.string());
  if (::listen(listen_fd_.get(), 128) != 0) {
    int err = errno;
    ::unlink(path_.c_str());
    throw_errno("vsock: listen on " + path_.string(), err);
  }
  ep_.reset(::epoll_create1(EPOLL_CLOEXEC));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;
  if (!ep_ || ::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, listen_fd_.get(), &ev) != 0) {
    int err = errno;
    ::unlink(path_.c_str());
    throw_errno("vsock: epoll", err);
  }
}

VirtioVsock::~VirtioVsock() = default;

VirtioVsock::Conn* VirtioVsock::find(uint32_t local, uint32_t peer) {
  auto it = by_key_.find(key(local, peer));
  return it == by_key_.end() ? nullptr : conns_.at(it->second).get();
}

void VirtioVsock::queue_rst(uint32_t local, uint32_t peer) {
  // The guest's packets stop being taken at kMaxResets; the host's own beyond twice that are
  // dropped (the guest's side times out).
  if (resets_.size() < 2 * kMaxResets) resets_.push_back({local, peer});
}

void VirtioVsock::drop_conn(Conn& c, bool send_rst) {
  if (c.state != State::kLine) {
    if (send_rst) queue_rst(c.local_port, c.peer_port);
    by_key_.erase(key(c.local_port, c.peer_port));
  }
  conns_.erase(c.id);  // closes the socket, which leaves the epoll set
  if (listener_paused_) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = 0;
    if (::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, listen_fd_.get(), &ev) == 0) listener_paused_ = false;
  }
}

void VirtioVsock::update_interest(Conn& c) {
  uint32_t want = 0;
  switch (c.state) {
    case State::kLine:
      want = EPOLLIN;
      break;
    case State::kConnecting:
      break;  // only a hang-up (always reported) matters
    case State::kEstablished:
      if (!c.host_eof && !(c.guest_shutdown & kShutdownRcv) && c.to_guest.size() < kHostBuffer)
        want |= EPOLLIN;
      [[fallthrough]];
    case State::kClosing:
      if (!c.to_host.empty()) want |= EPOLLOUT;
      break;
  }
  // A hang-up is reported whatever the interest: once seen, a socket with nothing to do
  // leaves the set (or it would be reported again and again).
  const bool keep = want != 0 || !c.hup;
  if (keep == c.registered && (!keep || want == c.interest)) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = c.id;
  int op = !keep ? EPOLL_CTL_DEL : c.registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
  if (::epoll_ctl(ep_.get(), op, c.fd.get(), &ev) == 0) {
    c.registered = keep;
    c.interest = want;
  }
}

void VirtioVsock::accept_clients() {
  for (int i = 0; i < 64; ++i) {
    UniqueFd fd(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED)
        return;
      // Out of descriptors: stop watching the listener until a connection closes.
      if (::epoll_ctl(ep_.get(), EPOLL_CTL_DEL, listen_fd_.get(), nullptr) == 0)
        listener_paused_ = true;
      return;
    }
    if (conns_.size() >= max_conns_) continue;  // closed at once: the client sees EOF
    auto c = std::make_unique<Conn>();
    c->id = next_id_++;
    c->fd = std::move(fd);
    c->deadline = Clock::now() + kTimeout;  // for the CONNECT line
    Conn& ref = *c;
    conns_.emplace(c->id, std::move(c));
    update_interest(ref);
    read_line(ref);  // the line may be there already
  }
}

void VirtioVsock::read_line(Conn& c) {
  char buf[kMaxConnectLine];
  const size_t room = kMaxConnectLine - c.line.size();
  // Peek first: bytes after the newline belong to the stream and stay in the socket.
  ssize_t n = ::recv(c.fd.get(), buf, room, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) return drop_conn(c, false);
  const char* nl = static_cast<const char*>(std::memchr(buf, '\n', size_t(n)));
  const size_t take = nl ? size_t(nl - buf) + 1 : size_t(n);
  if (::recv(c.fd.get(), buf, take, MSG_DONTWAIT) != ssize_t(take)) return drop_conn(c, false);
  c.line.append(buf, nl ? take - 1 : take);
  if (!nl) {
    if (c.line.size() >= kMaxConnectLine) drop_conn(c, false);  // no newline in time
    return;
  }
  auto port = parse_connect(c.line);
  if (!port) return drop_conn(c, false);
  // A host port for the flow, unused with this guest port.
  for (uint32_t tries = 0;; ++tries) {
    if (tries > kMaxConnections) return drop_conn(c, false);
    uint32_t p = next_host_port_++;
    if (next_host_port_ == kEndHostPort) next_host_port_ = kFirstHostPort;
    if (!by_key_.count(key(p, *port))) {
      c.local_port = p;
      break;
    }
  }
  c.peer_port = *port;
  c.line.clear();
  c.line.shrink_to_fit();
  by_key_[key(c.local_port, c.peer_port)] = c.id;
  c.state = State::kConnecting;
  c.pending |= kPendRequest;
  c.deadline = Clock::now() + kTimeout;
  update_interest(c);
}

bool VirtioVsock::read_host(Conn& c) {
  const size_t old = c.to_guest.size();
  if (old >= kHostBuffer) return true;
  c.to_guest.resize(kHostBuffer);
  ssize_t n = ::recv(c.fd.get(), c.to_guest.data() + old, kHostBuffer - old, MSG_DONTWAIT);
  c.to_guest.resize(old + size_t(std::max<ssize_t>(n, 0)));
  if (n == 0) c.host_eof = true;
  if (n < 0 && errno != EAGAIN && errno != EINTR) {
    drop_conn(c, true);
    return false;
  }
  return true;
}

bool VirtioVsock::flush_to_host(Conn& c) {
  while (!c.to_host.empty()) {
    ssize_t n = ::send(c.fd.get(), c.to_host.data(), c.to_host.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
    if (n <= 0) {
      drop_conn(c, true);  // the host peer went away
      return false;
    }
    c.to_host.erase(c.to_host.begin(), c.to_host.begin() + n);
    c.fwd_cnt += uint32_t(n);
  }
  // The guest, which last heard of fwd_told, thinks little room is left: tell it about more.
  if (c.fwd_cnt != c.fwd_told && kBufAlloc - (c.rx_cnt - c.fwd_told) < kCreditThreshold)
    c.pending |= kPendCredit;
  update_interest(c);
  return true;
}

void VirtioVsock::maybe_finish(Conn& c) {
  if (c.state == State::kLine || c.state == State::kConnecting) return;
  if (c.to_host.empty() && (c.guest_shutdown & kShutdownSend) && !c.host_write_shut) {
    ::shutdown(c.fd.get(), SHUT_WR);  // the host peer reads EOF
    c.host_write_shut = true;
  }
  if (c.reset_when_flushed && c.to_host.empty()) return drop_conn(c, true);
  if (c.state == State::kEstablished && c.host_eof && c.to_guest.empty()) {
    // The host peer closed and the guest has all it sent: SHUTDOWN, and the guest's RST
    // ends the flow (or the deadline does).
    c.pending |= kPendShutdown;
    c.state = State::kClosing;
    c.deadline = Clock::now() + kTimeout;
  }
  update_interest(c);
}

void VirtioVsock::host_event(Conn& c, uint32_t events) {
  if (c.state == State::kLine) {
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) read_line(c);
    return;
  }
  if (c.state == State::kConnecting) {
    if (events & (EPOLLHUP | EPOLLERR)) drop_conn(c, true);  // the client gave up
    return;
  }
  if (events & (EPOLLHUP | EPOLLERR)) c.hup = true;
  if ((events & (EPOLLOUT | EPOLLERR)) && !c.to_host.empty() && !flush_to_host(c)) return;
  if ((c.interest & EPOLLIN) && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !read_host(c)) return;
  maybe_finish(c);
}

bool VirtioVsock::expire() {
  const auto now = Clock::now();
  std::vector<Conn*> late;
  for (auto& [id, c] : conns_)
    if (c->state != State::kEstablished && c->deadline <= now) late.push_back(c.get());
  for (Conn* c : late) drop_conn(*c, c->state != State::kLine);
  return !late.empty();
}

int VirtioVsock::timeout_ms() const {
  std::lock_guard lk(mu_);
  std::optional<Clock::time_point> first;
  for (const auto& [id, c] : conns_)
    if (c->state != State::kEstablished && (!first || c->deadline < *first)) first = c->deadline;
  if (!first) return -1;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(*first - Clock::now()).count();
  return int(std::clamp<decltype(ms)>(ms, 0, kTimeout.count()));
}

void VirtioVsock::handle_host() {
  bool news = false;
  {
    std::lock_guard lk(mu_);
    epoll_event evs[64];
    int n = ::epoll_wait(ep_.get(), evs, 64, 0);
    for (int i = 0; i < n; ++i) {
      news = true;
      // epoll_event is packed on x86-64: its u64 is copied out, never bound to a reference.
      const uint64_t id = evs[i].data.u64;
      if (id == 0) {
        accept_clients();
        continue;
      }
      auto it = conns_.find(id);
      if (it != conns_.end()) host_event(*it->second, evs[i].events);  // else: dropped meanwhile
    }
    news |= expire();
  }
  if (news && kick_) kick_();
}

void VirtioVsock::guest_connect(const VsockHeader& h) {
  sockaddr_un sa;
  UniqueFd fd;
  if (addr_ && conns_.size() < max_conns_ &&
      to_sockaddr(std::string(addr_->text()) + "_" + std::to_string(h.dst_port), sa)) {
    fd.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    // A unix socket connects at once or not at all (EAGAIN: its backlog is full).
    if (fd && ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof sa) != 0)
      fd.reset();
  }
  if (!fd) return queue_rst(h.dst_port, h.src_port);
  auto c = std::make_unique<Conn>();
  c->id = next_id_++;
  c->fd = std::move(fd);
  c->state = State::kEstablished;
  c->local_port = h.dst_port;
  c->peer_port = h.src_port;
  c->peer_buf_alloc = h.buf_alloc;
  c->peer_fwd_cnt = h.fwd_cnt;
  c->pending = kPendResponse;
  Conn& ref = *c;
  by_key_[key(c->local_port, c->peer_port)] = c->id;
  conns_.emplace(c->id, std::move(c));
  update_interest(ref);
}

}  // namespace img2vm::vm
