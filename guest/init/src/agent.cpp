#include "img2vm/init/agent.hpp"

#include <fcntl.h>
#include <grp.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <variant>
#include <vector>

#include "img2vm/guestabi/agent.hpp"
#include "img2vm/guestabi/error.hpp"
#include "img2vm/init/command.hpp"
#include "img2vm/init/sys.hpp"
#include "img2vm/init/user.hpp"

namespace img2vm::init {

namespace guestabi = img2vm::guestabi;
using guestabi::FrameType;

namespace {

// How long a new connection may take to send its request.
constexpr int kRequestTimeoutMs = 10'000;
// How long the last frames may take to leave once the exec is over (a host that stopped
// reading).
constexpr int kFinalFlushMs = 10'000;
// Output still arriving this long after the exec'd process ended (from a background child that
// kept its stdout) is not waited for.
constexpr int kDrainAfterExitMs = 1'000;
// Bounds on what is buffered: host frames waiting for the process's stdin, frames waiting for
// the host.
constexpr std::size_t kMaxPendingStdin = 1u << 20;
constexpr std::size_t kMaxPendingOut = 256u << 10;
constexpr std::size_t kReadChunk = 64u << 10;

void say_warning(const std::string& line) {
  std::string l = "img2vm-init: warning: " + line + "\n";
  (void)!::write(2, l.data(), l.size());
}

long long now_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<long long>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

int remaining_ms(long long deadline) {
  long long left = deadline - now_ms();
  return left < 0 ? 0 : static_cast<int>(left);
}

// The connection: frames in through a decoder, frames out through a bounded buffer, never
// blocking (MSG_DONTWAIT), never raising SIGPIPE (MSG_NOSIGNAL).
class Conn {
 public:
  explicit Conn(int fd) : fd_(fd) {}
  int fd() const { return fd_; }

  void send(FrameType type, std::string_view payload) {
    out_ += guestabi::encode_frame(type, payload);
  }
  void send_error(const std::string& message) {
    guestabi::AgentResponse r;
    r.error = message;
    send(FrameType::kResponse, to_json(r));
  }
  std::size_t pending() const { return out_.size() - out_pos_; }

  // Writes what it can; false when the host is gone.
  bool flush_some() {
    while (pending() > 0) {
      ssize_t n = ::send(fd_, out_.data() + out_pos_, pending(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      if (n <= 0) return false;
      out_pos_ += static_cast<std::size_t>(n);
    }
    out_.clear();
    out_pos_ = 0;
    return true;
  }

  // Everything buffered, within `timeout_ms`; false when the host is gone or too slow.
  bool flush_all(int timeout_ms) {
    const long long deadline = now_ms() + timeout_ms;
    while (pending() > 0) {
      if (!flush_some()) return false;
      if (pending() == 0) break;
      pollfd p{fd_, POLLOUT, 0};
      int r = ::poll(&p, 1, remaining_ms(deadline));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
    }
    return true;
  }

  // Reads what is there into the decoder; false on end of stream or an error.
  bool read_some() {
    char buf[kReadChunk];
    for (;;) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      if (n <= 0) return false;
      decoder_.feed(std::string_view(buf, static_cast<std::size_t>(n)));
      return true;
    }
  }

  std::optional<guestabi::Frame> next() { return decoder_.next(); }  // throws guestabi::Error

 private:
  int fd_;
  guestabi::FrameDecoder decoder_;
  std::string out_;
  std::size_t out_pos_ = 0;
};

// The first frame, a request, within kRequestTimeoutMs. Throws guestabi::Error (the message for
// the host); nullopt when the host went away.
std::optional<guestabi::AgentRequest> read_request(Conn& c) {
  const long long deadline = now_ms() + kRequestTimeoutMs;
  for (;;) {
    if (auto f = c.next()) {
      if (f->type != FrameType::kRequest)
        throw guestabi::Error("agent: the first frame must be a request");
      return guestabi::agent_request_from_json(f->payload);
    }
    pollfd p{c.fd(), POLLIN, 0};
    int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) throw guestabi::Error("agent: no request within 10 s");
    if (r < 0 || !c.read_some()) return std::nullopt;
    if (p.revents & (POLLHUP | POLLERR) && !(p.revents & POLLIN)) return std::nullopt;
  }
}

void reset_signals() {
  for (int s = 1; s < NSIG; ++s) {
    if (s == SIGKILL || s == SIGSTOP) continue;
    ::signal(s, SIG_DFL);
  }
  sigset_t empty;
  sigemptyset(&empty);
  ::sigprocmask(SIG_SETMASK, &empty, nullptr);
}

void set_nonblock(int fd) {
  int fl = ::fcntl(fd, F_GETFL);
  if (fl >= 0) ::fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

bool workload_running(pid_t pid) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return false;
  // A zombie (exited, not reaped yet) no longer runs.
  try {
    std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat", 4096);
    auto paren = stat.rfind(')');
    if (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z')
      return false;
  } catch (const Error&) {
  }
  return true;
}

// The exec'd child's failure before execve, sent to the parent on a close-on-exec pipe as
// "<status> <message>".
[[noreturn]] void child_fail(int report, int status, const std::string& message) {
  std::string line = std::to_string(status) + " " + message;
  (void)!::write(report, line.data(), line.size());
  ::_exit(status);
}

struct ChildFds {
  int in = -1;      // becomes 0
  int out = -1;     // becomes 1
  int err = -1;     // becomes 2
  int tty = -1;     // the pty's slave: 0, 1, 2 and the controlling terminal
  int report = -1;  // the failure pipe's write end
};

[[noreturn]] void exec_child(const guestabi::ExecRequest& req, const ExecUser& user,
                             const std::string& workdir, const std::vector<std::string>& env,
                             const AgentContext& ctx, const ChildFds& fds) {
  reset_signals();
  ::setsid();
  if (fds.tty >= 0) {
    if (::ioctl(fds.tty, TIOCSCTTY, 0) != 0)
      child_fail(fds.report, 126,
                 std::string("making the tty controlling: ") + std::strerror(errno));
    for (int i = 0; i <= 2; ++i) ::dup2(fds.tty, i);
  } else {
    ::dup2(fds.in, 0);
    ::dup2(fds.out, 1);
    ::dup2(fds.err, 2);
  }
  ::umask(022);
  // As root (the guest) the exec's user is taken; elsewhere (tests) only the caller's own.
  if (::geteuid() == 0) {
    if (::setgroups(user.groups.size(), user.groups.data()) != 0)
      child_fail(fds.report, 126, std::string("setgroups: ") + std::strerror(errno));
    if (::setgid(user.gid) != 0)
      child_fail(fds.report, 126,
                 "setgid " + std::to_string(user.gid) + ": " + std::strerror(errno));
    if (::setuid(user.uid) != 0)
      child_fail(fds.report, 126,
                 "setuid " + std::to_string(user.uid) + ": " + std::strerror(errno));
  } else if (user.uid != ::geteuid() || user.gid != ::getegid()) {
    child_fail(fds.report, 126, "setuid " + std::to_string(user.uid) + ": " + std::strerror(EPERM));
  }
  if (::chdir(workdir.c_str()) != 0)
    child_fail(fds.report, 126, "chdir to " + workdir + ": " + std::strerror(errno));
  std::string path_env = env_get(env, "PATH").value_or(std::string(kDefaultPath));
  auto found = find_executable(ctx.root, req.args[0], path_env, workdir);
  if (auto* f = std::get_if<ExecFailure>(&found)) child_fail(fds.report, f->status, f->message);
  const std::string& path = std::get<std::string>(found);
  std::vector<char*> argv, envp;
  for (const auto& a : req.args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  ::execve(path.c_str(), argv.data(), envp.data());
  auto f = exec_failure(path, errno);
  child_fail(fds.report, f.status, f.message);
}

unsigned char status_byte(int status) {
  if (WIFEXITED(status)) return static_cast<unsigned char>(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return static_cast<unsigned char>(128 + WTERMSIG(status));
  return 255;
}

void finish(Conn& c) {
  c.flush_all(kFinalFlushMs);
  ::shutdown(c.fd(), SHUT_WR);
}

void send_exit(Conn& c, int status, const std::string& error) {
  c.send(FrameType::kExit, to_json(guestabi::ExecExit{status, error}));
  finish(c);
}

void kill_and_reap(pid_t pid) {
  ::kill(-pid, SIGKILL);
  ::kill(pid, SIGKILL);
  while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
}

void serve_exec(Conn& c, const guestabi::ExecRequest& req, const AgentContext& ctx) {
  ExecUser user;
  const std::string spec = req.user.empty() ? ctx.user : req.user;
  try {
    user = resolve_user(ctx.root, spec);
  } catch (const Error& e) {
    return send_exit(c, 126, "unable to find user " + spec + ": " + e.what());
  }
  const std::string workdir = req.workdir.empty() ? ctx.workdir : req.workdir;
  std::vector<std::string> env = workload_env(ctx.config_env, ctx.hostname, req.tty, user.home);
  for (const auto& e : req.env) env_set(env, e);

  // The parent's ends (kept) and the child's (closed after the fork).
  UniqueFd in_w, out_r, err_r, master;
  UniqueFd in_r, out_w, err_w, slave, report_r, report_w;
  auto make_pipe = [](UniqueFd& r, UniqueFd& w) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw_errno("pipe");
    r = UniqueFd(p[0]);
    w = UniqueFd(p[1]);
  };
  try {
    make_pipe(report_r, report_w);
    if (req.tty) {
      master = UniqueFd(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
      if (!master) throw_errno("opening a pty");
      char name[128];
      if (::grantpt(master.get()) != 0 || ::unlockpt(master.get()) != 0 ||
          ::ptsname_r(master.get(), name, sizeof name) != 0)
        throw_errno("setting up the pty");
      slave = UniqueFd(::open(name, O_RDWR | O_NOCTTY | O_CLOEXEC));
      if (!slave) throw_errno(std::string("opening ") + name);
      if (req.rows && req.cols) {
        winsize ws{};
        ws.ws_row = req.rows;
        ws.ws_col = req.cols;
        ::ioctl(master.get(), TIOCSWINSZ, &ws);
      }
    } else {
      if (req.open_stdin) {
        make_pipe(in_r, in_w);
      } else {
        in_r = UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
        if (!in_r) throw_errno("opening /dev/null");
      }
      make_pipe(out_r, out_w);
      make_pipe(err_r, err_w);
    }
  } catch (const Error& e) {
    return send_exit(c, 126, e.what());
  }

  pid_t pid = ::fork();
  if (pid < 0) return send_exit(c, 126, std::string("fork: ") + std::strerror(errno));
  if (pid == 0)
    exec_child(req, user, workdir, env, ctx,
               ChildFds{in_r.get(), out_w.get(), err_w.get(), slave.get(), report_w.get()});
  in_r = UniqueFd();
  out_w = UniqueFd();
  err_w = UniqueFd();
  slave = UniqueFd();
  report_w = UniqueFd();

  // The child's report: nothing (end of file at its execve) or "<status> <message>".
  std::string report;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(report_r.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || report.size() > 65536) break;
    report.append(buf, static_cast<std::size_t>(n));
  }
  report_r = UniqueFd();
  if (!report.empty()) {
    int wst = 0;
    while (::waitpid(pid, &wst, 0) < 0 && errno == EINTR) {
    }
    int status = std::atoi(report.c_str());
    auto space = report.find(' ');
    return send_exit(c, status >= 0 && status <= 255 ? status : 126,
                     space == std::string::npos ? report : report.substr(space + 1));
  }

  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  // Outputs: [0] stdout (the pty with a tty), [1] stderr.
  int outs[2] = {req.tty ? master.get() : out_r.get(), req.tty ? -1 : err_r.get()};
  const FrameType out_types[2] = {FrameType::kStdout, FrameType::kStderr};
  int in_fd = req.tty ? master.get() : in_w.get();  // -1 without stdin
  for (int fd : {outs[0], outs[1], in_fd})
    if (fd >= 0) set_nonblock(fd);
  // The output is read in chunks as large as a frame holds: each becomes one frame and about one
  // vsock packet (4 KiB reads made 64 MiB of stdout 16,384 packets).
  std::vector<char> chunk(kReadChunk);
  std::string pending_in;
  bool stdin_closing = false, stdin_open = req.open_stdin;
  bool exited = false;
  int wstatus = 0;
  long long exit_time = 0;

  auto host_gone = [&] { kill_and_reap(pid); };
  // The host's frames: those the decoder holds (read together with the request, or with the
  // previous ones) are handled before waiting for more; false after an error was answered.
  auto handle_frames = [&]() -> bool {
    try {
      while (auto f = c.next()) {
        switch (f->type) {
          case FrameType::kStdin:
            if (stdin_open && !stdin_closing) pending_in += f->payload;
            break;
          case FrameType::kStdinClose:
            stdin_closing = true;
            break;
          case FrameType::kResize: {
            auto [rows, cols] = guestabi::decode_resize(f->payload);
            if (req.tty) {
              winsize ws{};
              ws.ws_row = rows;
              ws.ws_col = cols;
              ::ioctl(master.get(), TIOCSWINSZ, &ws);
            }
            break;
          }
          case FrameType::kSignal:
            if (!exited) ::kill(pid, guestabi::decode_signal(f->payload));
            break;
          default:
            throw guestabi::Error("agent: unexpected frame type " +
                                  std::to_string(static_cast<unsigned>(f->type)) +
                                  " during an exec");
        }
      }
    } catch (const guestabi::Error& e) {
      if (!exited) kill_and_reap(pid);
      c.send_error(e.what());
      return false;
    }
    return true;
  };
  if (!handle_frames()) return finish(c);

  for (;;) {
    if (exited && ((outs[0] < 0 && outs[1] < 0) || now_ms() - exit_time >= kDrainAfterExitMs))
      break;
    pollfd p[5];
    int n = 0;
    const int conn_i = n;
    p[n++] = {c.fd(),
              static_cast<short>((pending_in.size() < kMaxPendingStdin ? POLLIN : 0) |
                                 (c.pending() ? POLLOUT : 0)),
              0};
    int out_i[2] = {-1, -1};
    for (int k = 0; k < 2; ++k)
      if (outs[k] >= 0 && c.pending() < kMaxPendingOut) {
        out_i[k] = n;
        p[n++] = {outs[k], POLLIN, 0};
      }
    int in_i = -1;
    if (stdin_open && in_fd >= 0 && !pending_in.empty()) {
      in_i = n;
      p[n++] = {in_fd, POLLOUT, 0};
    }
    int pid_i = -1;
    if (!exited && pidfd) {
      pid_i = n;
      p[n++] = {pidfd.get(), POLLIN, 0};
    }
    int timeout = -1;
    if (exited)
      timeout = remaining_ms(exit_time + kDrainAfterExitMs);
    else if (!pidfd)
      timeout = 100;  // no pidfd (Linux < 5.3): look with waitpid
    int r = ::poll(p, static_cast<nfds_t>(n), timeout);
    if (r < 0 && errno != EINTR) return host_gone();

    if (p[conn_i].revents & (POLLIN | POLLHUP | POLLERR)) {
      if (!c.read_some()) return host_gone();
      if (!handle_frames()) return finish(c);
    }
    if (p[conn_i].revents & POLLOUT && !c.flush_some()) return host_gone();

    for (int k = 0; k < 2; ++k) {
      if (out_i[k] < 0 || !(p[out_i[k]].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t got = ::read(outs[k], chunk.data(), chunk.size());
      if (got > 0) {
        c.send(out_types[k], std::string_view(chunk.data(), static_cast<std::size_t>(got)));
      } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
        outs[k] = -1;  // end of file; EIO on a pty once every slave is closed
      }
    }
    if (!c.flush_some()) return host_gone();

    if (in_i >= 0 && p[in_i].revents & (POLLOUT | POLLERR | POLLHUP)) {
      ssize_t w = ::write(in_fd, pending_in.data(), pending_in.size());
      if (w > 0) {
        pending_in.erase(0, static_cast<std::size_t>(w));
      } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
        pending_in.clear();  // the process closed its stdin
        stdin_open = false;
      }
    }
    if (stdin_closing && pending_in.empty() && stdin_open) {
      stdin_open = false;
      if (req.tty) {
        // A terminal has no end of file of its own: the line discipline's EOF character.
        termios t{};
        char eof = ::tcgetattr(master.get(), &t) == 0 ? static_cast<char>(t.c_cc[VEOF]) : '\x04';
        (void)!::write(master.get(), &eof, 1);
      } else {
        in_w = UniqueFd();
      }
    }

    if (!exited && (pid_i < 0 || p[pid_i].revents & POLLIN)) {
      pid_t w = ::waitpid(pid, &wstatus, WNOHANG);
      if (w == pid) {
        exited = true;
        exit_time = now_ms();
      }
    }
  }
  return send_exit(c, status_byte(wstatus), "");
}

}  // namespace

StartGate::StartGate(int write_fd) : fd_(write_fd) {
  static_assert(std::atomic<bool>::is_always_lock_free);
  void* p = ::mmap(nullptr, sizeof(std::atomic<bool>), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw_errno("mapping the start gate's flag");
  opened_ = std::shared_ptr<std::atomic<bool>>(
      new (p) std::atomic<bool>(false),
      [](std::atomic<bool>* f) { ::munmap(f, sizeof(std::atomic<bool>)); });
}

std::string StartGate::open() const {
  if (opened_->exchange(true)) return "start: the workload has already started";
  const char go = 'S';
  ssize_t n;
  do {
    n = ::write(fd_, &go, 1);
  } while (n < 0 && errno == EINTR);
  const int err = errno;
  ::close(fd_);
  if (n == 1) return {};
  if (err == EPIPE) return "start: the workload ended before it was started";
  return std::string("start: writing to the workload's start pipe: ") + std::strerror(err);
}

void serve_connection(int fd, const AgentContext& ctx) noexcept {
  ::signal(SIGPIPE, SIG_IGN);
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  Conn c(fd);
  try {
    std::optional<guestabi::AgentRequest> req;
    try {
      req = read_request(c);
    } catch (const guestabi::Error& e) {
      c.send_error(e.what());
      return finish(c);
    }
    if (!req) return;
    if (const auto* e = std::get_if<guestabi::ExecRequest>(&*req)) {
      serve_exec(c, *e, ctx);
    } else if (std::holds_alternative<guestabi::SignalRequest>(*req) ||
               std::holds_alternative<guestabi::StopRequest>(*req)) {
      const auto* s = std::get_if<guestabi::SignalRequest>(&*req);
      const int sig = s ? s->signal : ctx.stop_signal;
      guestabi::AgentResponse r;
      if (ctx.workload_pid <= 0 || ::kill(ctx.workload_pid, sig) != 0)
        r.error = "signalling the workload: " +
                  std::string(ctx.workload_pid <= 0 ? "no workload" : std::strerror(errno));
      c.send(FrameType::kResponse, to_json(r));
      finish(c);
    } else if (std::holds_alternative<guestabi::StartRequest>(*req)) {
      guestabi::AgentResponse r;
      r.error = ctx.start ? ctx.start->open() : "start: the workload has already started";
      c.send(FrameType::kResponse, to_json(r));
      finish(c);
    } else {
      guestabi::AgentResponse r;
      r.workload_pid = ctx.workload_pid;
      r.running = workload_running(ctx.workload_pid);
      c.send(FrameType::kResponse, to_json(r));
      finish(c);
    }
  } catch (const std::exception& e) {
    // Out of memory and the like: say so if the host still listens.
    try {
      c.send_error(std::string("agent: internal error: ") + e.what());
      finish(c);
    } catch (...) {
    }
  }
}

void serve_listener(int listen_fd, const AgentContext& ctx) {
  unsigned active = 0;
  for (;;) {
    while (active > 0 && ::waitpid(-1, nullptr, WNOHANG) > 0) --active;
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        ::poll(nullptr, 0, 100);  // out of resources for now: not a busy loop
        continue;
      }
      return;
    }
    UniqueFd conn(fd);
    while (active > 0 && ::waitpid(-1, nullptr, WNOHANG) > 0) --active;
    if (active >= guestabi::kMaxAgentConnections) {
      Conn c(conn.get());
      c.send_error("agent: too many requests at once (at most " +
                   std::to_string(guestabi::kMaxAgentConnections) + ")");
      c.flush_some();
      continue;
    }
    pid_t pid = ::fork();
    if (pid == 0) {
      ::close(listen_fd);
      serve_connection(conn.get(), ctx);
      ::_exit(0);
    }
    if (pid > 0) ++active;
  }
}

void run_agent(const AgentContext& ctx) {
  reset_signals();
  ::signal(SIGPIPE, SIG_IGN);
  // The exec'd processes get their stdio with dup2 onto 0-2: no pipe of theirs may land there.
  for (int fd = 0; fd <= 2; ++fd)
    if (::fcntl(fd, F_GETFD) == -1 && ::open("/dev/null", O_RDWR) != fd) ::_exit(0);
  UniqueFd s(::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) {
    if (ctx.expected)
      say_warning(std::string("exec agent: no vsock (") + std::strerror(errno) +
                  "): exec, signal and status requests are unavailable");
    ::_exit(0);
  }
  sockaddr_vm addr{};
  addr.svm_family = AF_VSOCK;
  addr.svm_cid = VMADDR_CID_ANY;
  addr.svm_port = guestabi::kAgentPort;
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(s.get(), 64) != 0) {
    if (ctx.expected)
      say_warning("exec agent: listening on vsock port " + std::to_string(guestabi::kAgentPort) +
                  ": " + std::strerror(errno));
    ::_exit(0);
  }
  serve_listener(s.get(), ctx);
  say_warning(std::string("exec agent: accept: ") + std::strerror(errno));
  ::_exit(0);
}

}  // namespace img2vm::init
