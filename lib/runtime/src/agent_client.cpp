#include "img2vm/runtime/agent_client.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "img2vm/base/error.hpp"
#include "img2vm/base/unix_address.hpp"
#include "img2vm/guestabi/error.hpp"

namespace img2vm::runtime {

namespace guestabi = img2vm::guestabi;
using guestabi::FrameType;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kMaxHandshakeLine = 64;
constexpr std::size_t kMaxQueuedOut = 256u << 10;  // stdin frames waiting for the guest
constexpr std::size_t kReadChunk = 64u << 10;

std::string where(const std::filesystem::path& socket) {
  return "exec agent at " + socket.string();
}

[[noreturn]] void fail(ErrorKind kind, const std::filesystem::path& socket,
                       const std::string& why) {
  throw Error(kind, where(socket) + ": " + why);
}

int remaining_ms(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

// Waits for `events` on `fd` until `deadline`; false when it passed.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw_errno("poll");
    return r > 0;
  }
}

// Sends all of `bytes` before `deadline` (false when it passed). Throws on a broken connection.
bool send_before(const AgentConnection& c, std::string_view bytes, Clock::time_point deadline) {
  while (!bytes.empty()) {
    ssize_t n = ::send(c.fd.get(), bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      bytes.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
      fail(ErrorKind::kNetwork, c.socket, std::string("sending: ") + std::strerror(errno));
    if (!wait_for(c.fd.get(), POLLOUT, deadline)) return false;
  }
  return true;
}

// The frames of a connection: what came with the handshake, then what recv() gives.
class Reader {
 public:
  explicit Reader(AgentConnection& c) : c_(c) {
    if (!c.leftover.empty()) decoder_.feed(c.leftover);
    c.leftover.clear();
  }
  std::optional<guestabi::Frame> next() {
    try {
      return decoder_.next();
    } catch (const guestabi::Error& e) {
      fail(ErrorKind::kIntegrity, c_.socket, e.what());
    }
  }
  bool partial() const { return decoder_.partial(); }
  // Reads what is there; false at the end of the stream.
  bool read_some() {
    char buf[kReadChunk];
    for (;;) {
      ssize_t n = ::recv(c_.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) {
        decoder_.feed(std::string_view(buf, static_cast<std::size_t>(n)));
        return true;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      if (n < 0 && errno != ECONNRESET && errno != EPIPE)
        fail(ErrorKind::kNetwork, c_.socket, std::string("receiving: ") + std::strerror(errno));
      return false;
    }
  }

 private:
  AgentConnection& c_;
  guestabi::FrameDecoder decoder_;
};

[[noreturn]] void refused(const AgentConnection& c, std::string_view payload) {
  guestabi::AgentResponse r;
  try {
    r = guestabi::agent_response_from_json(payload);
  } catch (const guestabi::Error& e) {
    fail(ErrorKind::kIntegrity, c.socket, e.what());
  }
  fail(ErrorKind::kInvalidArgument, c.socket,
       r.error.empty() ? std::string("the request was refused") : r.error);
}

// A signal, stop, start or status request: its response, within `timeout` (handshake included).
guestabi::AgentResponse request_response(const std::filesystem::path& uds,
                                         const guestabi::AgentRequest& req,
                                         std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  AgentConnection c = connect_agent(uds, timeout);
  if (!send_before(c, guestabi::encode_frame(FrameType::kRequest, to_json(req)), deadline))
    fail(ErrorKind::kNetwork, uds, "timed out sending the request");
  Reader reader(c);
  for (;;) {
    if (auto f = reader.next()) {
      if (f->type != FrameType::kResponse)
        fail(ErrorKind::kIntegrity, uds,
             "unexpected frame type " + std::to_string(unsigned(f->type)) + " for a request");
      try {
        return guestabi::agent_response_from_json(f->payload);
      } catch (const guestabi::Error& e) {
        fail(ErrorKind::kIntegrity, uds, e.what());
      }
    }
    if (!wait_for(c.fd.get(), POLLIN, deadline))
      fail(ErrorKind::kNetwork, uds, "no answer within " + std::to_string(timeout.count()) + " ms");
    if (!reader.read_some())
      fail(ErrorKind::kNetwork, uds, "the connection ended without an answer");
  }
}

void write_out(int fd, std::string_view data, const char* what) {
  if (fd >= 0) write_all(fd, data, what);
}

}  // namespace

namespace {

// One CONNECT handshake; nullopt when the VMM closed without an answer (nothing listens on
// `port` in the guest).
std::optional<AgentConnection> try_connect(const std::filesystem::path& vsock_uds,
                                           Clock::time_point deadline,
                                           std::chrono::milliseconds timeout, uint32_t port) {
  AgentConnection c;
  c.socket = vsock_uds;
  const UnixAddress addr(vsock_uds);
  c.fd = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!c.fd) throw_errno("socket");
  for (;;) {
    if (::connect(c.fd.get(), addr.get(), addr.size()) == 0) break;
    int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN) {  // the VMM's backlog is full: try again until the deadline
      if (remaining_ms(deadline) == 0) fail(ErrorKind::kNetwork, vsock_uds, "connect timed out");
      ::poll(nullptr, 0, 10);
      continue;
    }
    fail(err == ENOENT || err == ECONNREFUSED ? ErrorKind::kNotFound : ErrorKind::kNetwork,
         vsock_uds, std::string("connect: ") + std::strerror(err) + " (is the VM running?)");
  }
  const std::string line = "CONNECT " + std::to_string(port) + "\n";
  if (!send_before(c, line, deadline))
    fail(ErrorKind::kNetwork, vsock_uds, "timed out sending the CONNECT line");
  std::string got;
  char buf[256];
  for (;;) {
    auto nl = got.find('\n');
    if (nl != std::string::npos) {
      std::string answer = got.substr(0, nl);
      c.leftover = got.substr(nl + 1);
      bool ok = answer.size() > 3 && answer.compare(0, 3, "OK ") == 0 &&
                answer.find_first_not_of("0123456789", 3) == std::string::npos;
      if (!ok)
        fail(ErrorKind::kIntegrity, vsock_uds,
             "the VMM answered CONNECT " + std::to_string(port) + " with \"" +
                 answer.substr(0, kMaxHandshakeLine) + "\", not OK <port>");
      return c;
    }
    if (got.size() > kMaxHandshakeLine)
      fail(ErrorKind::kIntegrity, vsock_uds, "the VMM's answer to CONNECT is not a line");
    if (!wait_for(c.fd.get(), POLLIN, deadline))
      fail(ErrorKind::kNetwork, vsock_uds,
           "no answer to CONNECT " + std::to_string(port) + " within " +
               std::to_string(timeout.count()) + " ms");
    ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return std::nullopt;
    got.append(buf, static_cast<std::size_t>(n));
  }
}

}  // namespace

AgentConnection connect_agent(const std::filesystem::path& vsock_uds,
                              std::chrono::milliseconds timeout, uint32_t port) {
  const auto deadline = Clock::now() + timeout;
  // A VM that has just started may not listen yet: its refusals are retried until the deadline.
  auto refused = [&] {
    fail(ErrorKind::kNetwork, vsock_uds,
         "the VMM refused CONNECT " + std::to_string(port) + " for " +
             std::to_string(timeout.count()) +
             " ms (nothing listens on that port in the guest: is its init the agent's?)");
  };
  for (bool retried = false;; retried = true) {
    try {
      if (auto c = try_connect(vsock_uds, deadline, timeout, port)) return std::move(*c);
    } catch (const Error&) {
      if (retried && remaining_ms(deadline) == 0) refused();  // the deadline cut a retry short
      throw;
    }
    if (remaining_ms(deadline) == 0) refused();
    ::poll(nullptr, 0, 20);
  }
}

ExecSession::ExecSession(AgentConnection conn, const guestabi::ExecRequest& request)
    : conn_(std::move(conn)), stdin_(request.open_stdin) {
  wake_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_) throw_errno("eventfd");
  try {
    control_ =
        guestabi::encode_frame(FrameType::kRequest, to_json(guestabi::AgentRequest{request}));
  } catch (const guestabi::Error& e) {
    throw Error(ErrorKind::kInvalidArgument, where(conn_.socket) + ": " + e.what());
  }
}

ExecSession::~ExecSession() = default;

void ExecSession::queue(std::string frame) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    control_ += frame;
  }
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof one);
}

void ExecSession::resize(uint16_t rows, uint16_t cols) {
  queue(guestabi::encode_frame(FrameType::kResize, guestabi::encode_resize(rows, cols)));
}

void ExecSession::signal(int sig) {
  std::string payload;
  try {
    payload = guestabi::encode_signal(sig);
  } catch (const guestabi::Error& e) {
    throw Error(ErrorKind::kInvalidArgument, e.what());
  }
  queue(guestabi::encode_frame(FrameType::kSignal, payload));
}

ExecResult ExecSession::run(int in_fd, int out_fd, int err_fd) {
  Reader reader(conn_);
  std::string out;  // frames for the guest, in order
  {
    std::lock_guard<std::mutex> lock(mu_);
    out.swap(control_);
  }
  bool reading_in = in_fd >= 0 && stdin_;
  bool can_send = true, eof = false;
  char buf[kReadChunk];
  for (;;) {
    while (auto f = reader.next()) {
      switch (f->type) {
        case FrameType::kStdout:
          write_out(out_fd, f->payload, "the exec's stdout");
          break;
        case FrameType::kStderr:
          write_out(err_fd, f->payload, "the exec's stderr");
          break;
        case FrameType::kExit:
          try {
            guestabi::ExecExit e = guestabi::exec_exit_from_json(f->payload);
            return ExecResult{e.status, e.error};
          } catch (const guestabi::Error& e) {
            fail(ErrorKind::kIntegrity, conn_.socket, e.what());
          }
          break;
        case FrameType::kResponse:
          refused(conn_, f->payload);
        default:
          fail(ErrorKind::kIntegrity, conn_.socket,
               "unexpected frame type " + std::to_string(unsigned(f->type)) + " during an exec");
      }
    }
    if (eof)
      fail(ErrorKind::kNetwork, conn_.socket,
           reader.partial() ? "the connection ended in the middle of a frame"
                            : "the connection ended before the exec's exit status");
    pollfd p[3];
    nfds_t n = 0;
    p[n++] = {conn_.fd.get(), static_cast<short>(POLLIN | (can_send && !out.empty() ? POLLOUT : 0)),
              0};
    p[n++] = {wake_.get(), POLLIN, 0};
    const bool poll_in = reading_in && out.size() < kMaxQueuedOut;
    if (poll_in) p[n++] = {in_fd, POLLIN, 0};
    if (::poll(p, n, -1) < 0) {
      if (errno == EINTR) continue;
      throw_errno("poll");
    }
    if (p[1].revents & POLLIN) {
      uint64_t v;
      (void)!::read(wake_.get(), &v, sizeof v);
      std::lock_guard<std::mutex> lock(mu_);
      out += control_;
      control_.clear();
    }
    if (poll_in && p[2].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t got = ::read(in_fd, buf, sizeof buf);
      if (got > 0) {
        out += guestabi::encode_frame(FrameType::kStdin,
                                      std::string_view(buf, static_cast<std::size_t>(got)));
      } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
        reading_in = false;
        out += guestabi::encode_frame(FrameType::kStdinClose, "");
      }
    }
    if (can_send && !out.empty() && p[0].revents & POLLOUT) {
      ssize_t sent = ::send(conn_.fd.get(), out.data(), out.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (sent > 0) {
        out.erase(0, static_cast<std::size_t>(sent));
      } else if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        // The guest stopped reading for good; what it still sends (its answer) is read below.
        can_send = false;
        out.clear();
        reading_in = false;
      }
    }
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR) && !reader.read_some()) eof = true;
  }
}

ExecResult exec(const std::filesystem::path& vsock_uds, std::chrono::milliseconds timeout,
                const guestabi::ExecRequest& request, int in_fd, int out_fd, int err_fd) {
  ExecSession session(connect_agent(vsock_uds, timeout), request);
  return session.run(in_fd, out_fd, err_fd);
}

void signal_workload(const std::filesystem::path& vsock_uds, int sig,
                     std::chrono::milliseconds timeout) {
  if (sig < 1 || sig > 64)
    throw Error(ErrorKind::kInvalidArgument, "signal " + std::to_string(sig) + " is not 1-64");
  guestabi::AgentResponse r = request_response(vsock_uds, guestabi::SignalRequest{sig}, timeout);
  if (!r.error.empty()) fail(ErrorKind::kInvalidArgument, vsock_uds, r.error);
}

void stop_workload(const std::filesystem::path& vsock_uds, std::chrono::milliseconds timeout) {
  guestabi::AgentResponse r = request_response(vsock_uds, guestabi::StopRequest{}, timeout);
  if (!r.error.empty()) fail(ErrorKind::kInvalidArgument, vsock_uds, r.error);
}

void start_workload(const std::filesystem::path& vsock_uds, std::chrono::milliseconds timeout) {
  guestabi::AgentResponse r = request_response(vsock_uds, guestabi::StartRequest{}, timeout);
  if (!r.error.empty()) fail(ErrorKind::kInvalidArgument, vsock_uds, r.error);
}

guestabi::AgentResponse agent_status(const std::filesystem::path& vsock_uds,
                                     std::chrono::milliseconds timeout) {
  guestabi::AgentResponse r = request_response(vsock_uds, guestabi::StatusRequest{}, timeout);
  if (!r.error.empty()) fail(ErrorKind::kInvalidArgument, vsock_uds, r.error);
  return r;
}

}  // namespace img2vm::runtime
