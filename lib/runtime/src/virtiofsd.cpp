#include "img2vm/runtime/virtiofsd.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <utility>
#include <vector>

#include "img2vm/base/error.hpp"

namespace img2vm::runtime {

namespace fs = std::filesystem;

namespace {

constexpr const char* kEnv = "IMG2VM_VIRTIOFSD";
constexpr size_t kTailBytes = 2048;

bool executable(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec) && ::access(p.c_str(), X_OK) == 0;
}

}  // namespace

fs::path find_virtiofsd(const fs::path& explicit_path) {
  if (!explicit_path.empty()) {
    if (!executable(explicit_path))
      throw Error(ErrorKind::kNotFound,
                  "virtiofsd " + explicit_path.string() + " does not exist or is not executable");
    return explicit_path;
  }
  if (const char* e = std::getenv(kEnv); e && *e) {
    if (!executable(e))
      throw Error(ErrorKind::kNotFound, std::string("virtiofsd ") + e + " (from " + kEnv +
                                            ") does not exist or is not executable");
    return e;
  }
  for (const char* p : {"/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"})
    if (executable(p)) return p;
  throw Error(ErrorKind::kNotFound,
              "virtiofsd is not installed (needed to share host directories): install "
              "qemu-system-common (Debian's /usr/lib/qemu/virtiofsd) or set IMG2VM_VIRTIOFSD to "
              "a virtiofsd program");
}

fs::path share_source(const fs::path& source) {
  struct stat st {};
  if (source.empty()) throw Error(ErrorKind::kInvalidArgument, "bind source path is empty");
  if (::stat(source.c_str(), &st) != 0) {
    const int e = errno;
    if (e == ENOENT || e == ENOTDIR)
      throw Error(ErrorKind::kNotFound, "bind source path does not exist: " + source.string());
    throw_errno("bind source path " + source.string(), e);
  }
  if (!S_ISDIR(st.st_mode))
    throw Error(ErrorKind::kInvalidArgument,
                "bind source path is not a directory: " + source.string() +
                    " (virtio-fs shares directories)");
  return fs::canonical(source);
}

namespace {

// What the child does between fork and exec, prepared before the fork: only async-signal-safe
// calls happen there.
struct ChildPlan {
  pid_t parent = 0;
  bool userns = false;  // not root: an unprivileged user namespace mapping us to root
  bool read_only = false;
  std::string source, program, uid_map, gid_map;
  std::vector<std::string> args;
  std::vector<char*> argv;
  int listen_fd = -1, log_fd = -1, null_fd = -1, err_fd = -1;
};

// The steps of the child, reported with errno on the error pipe when one fails.
enum Step : int { kSession = 1, kUnshare, kIdMaps, kPrivate, kBind, kReadOnly, kExec };

[[noreturn]] void child_fail(int fd, int step) {
  const int m[2] = {step, errno};
  (void)!::write(fd, m, sizeof m);
  ::_exit(127);
}

bool write_proc(const char* path, std::string_view text) {
  int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::write(fd, text.data(), text.size()) == ssize_t(text.size());
  const int e = errno;
  ::close(fd);
  errno = e;
  return ok;
}

// A mount namespace of its own (and a user namespace when not root) in which the source is a
// read-only bind mount, submounts included, when asked.
void enter_namespaces(const ChildPlan& p) {
  // A process that changed its user ids (a root program that dropped them) is not dumpable,
  // and then its /proc/self files belong to root and the id maps cannot be written.
  if (p.userns) ::prctl(PR_SET_DUMPABLE, 1);
  if (::unshare(CLONE_NEWNS | (p.userns ? CLONE_NEWUSER : 0)) != 0) child_fail(p.err_fd, kUnshare);
  if (p.userns &&
      !(write_proc("/proc/self/setgroups", "deny") && write_proc("/proc/self/uid_map", p.uid_map) &&
        write_proc("/proc/self/gid_map", p.gid_map)))
    child_fail(p.err_fd, kIdMaps);
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
    child_fail(p.err_fd, kPrivate);
  if (!p.read_only) return;
  if (::mount(p.source.c_str(), p.source.c_str(), nullptr, MS_BIND | MS_REC, nullptr) != 0)
    child_fail(p.err_fd, kBind);
  struct mount_attr attr {};
  attr.attr_set = MOUNT_ATTR_RDONLY;
  if (::mount_setattr(AT_FDCWD, p.source.c_str(), AT_RECURSIVE, &attr, sizeof attr) != 0)
    child_fail(p.err_fd, kReadOnly);
}

[[noreturn]] void run_child(const ChildPlan& p) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != p.parent) ::_exit(127);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction ign {};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ign, nullptr);  // a closed log pipe must not kill it
  // Out of the caller's session: a terminal's Ctrl-C is for the VM's owner, not for virtiofsd.
  if (::setsid() < 0) child_fail(p.err_fd, kSession);
  ::dup2(p.null_fd, STDIN_FILENO);
  ::dup2(p.null_fd, STDOUT_FILENO);
  ::dup2(p.log_fd, STDERR_FILENO);
  (void)::close_range(3, ~0u, CLOSE_RANGE_CLOEXEC);
  (void)::fcntl(p.listen_fd, F_SETFD, 0);
  enter_namespaces(p);
  ::execv(p.program.c_str(), p.argv.data());
  child_fail(p.err_fd, kExec);
}

// fuse_opt's escaping: a comma or backslash in a value is preceded by a backslash.
std::string fuse_opt_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == ',' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

UniqueFd unix_socket() {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw_errno("socket(AF_UNIX)");
  return fd;
}

sockaddr_un unix_address(const fs::path& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.string().size() >= sizeof a.sun_path)
    throw Error(ErrorKind::kInvalidArgument,
                "socket path too long (set TMPDIR to a shorter directory): " + path.string());
  std::memcpy(a.sun_path, path.c_str(), path.string().size());
  return a;
}

UniqueFd listen_unix(const fs::path& path) {
  UniqueFd fd = unix_socket();
  sockaddr_un a = unix_address(path);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::listen(fd.get(), 1) != 0)
    throw_errno("cannot listen on " + path.string());
  return fd;
}

// Connecting does not wait for anyone: the listening socket's backlog holds the connection
// until virtiofsd, which inherits the socket, accepts it.
UniqueFd connect_unix(const fs::path& path) {
  UniqueFd fd = unix_socket();
  sockaddr_un a = unix_address(path);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    throw_errno("cannot connect to virtiofsd's socket " + path.string());
  return fd;
}

std::pair<UniqueFd, UniqueFd> make_pipe(int flags) {
  int p[2];
  if (::pipe2(p, flags | O_CLOEXEC) != 0) throw_errno("pipe");
  return {UniqueFd(p[0]), UniqueFd(p[1])};
}

std::string sysctl(const char* path) {
  try {
    std::string v = read_file(path, 64);
    while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
    return v;
  } catch (const Error&) {
    return "";
  }
}

// Why this host refuses an unprivileged user namespace, as far as its settings tell.
std::string userns_refusal(int err) {
  if (sysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0")
    return "kernel.unprivileged_userns_clone is 0 (sysctl -w kernel.unprivileged_userns_clone=1)";
  if (sysctl("/proc/sys/user/max_user_namespaces") == "0")
    return "user.max_user_namespaces is 0 (sysctl -w user.max_user_namespaces=15000)";
  if (sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1")
    return "kernel.apparmor_restrict_unprivileged_userns is 1";
  return std::string("unshare(CLONE_NEWUSER): ") + std::strerror(err);
}

[[noreturn]] void throw_child_error(const ChildPlan& p, int step, int err) {
  const std::string what = "virtiofsd for " + p.source;
  if (step == kUnshare && p.userns)
    throw Error(ErrorKind::kUnsupported,
                what + ": not root, and this host allows no unprivileged user namespace (" +
                    userns_refusal(err) + "); run as root or allow them");
  static const char* const names[] = {"",
                                      "setsid",
                                      "unshare",
                                      "writing the user namespace's id maps",
                                      "making its mounts private",
                                      "bind-mounting the source",
                                      "making the source read-only",
                                      "cannot start"};
  const char* name = step >= kSession && step <= kExec ? names[step] : "failed";
  if (step == kExec) throw_errno(what + ": cannot start " + p.program, err);
  throw_errno(what + ": " + name, err);
}

ChildPlan plan(const fs::path& source, const fs::path& program, bool read_only, int listen_fd) {
  ChildPlan p;
  p.parent = ::getpid();
  p.userns = ::geteuid() != 0;
  p.read_only = read_only;
  p.source = source.string();
  p.program = program.string();
  p.uid_map = "0 " + std::to_string(::geteuid()) + " 1";
  p.gid_map = "0 " + std::to_string(::getegid()) + " 1";
  p.listen_fd = listen_fd;
  p.args = {"virtiofsd", "--fd=" + std::to_string(listen_fd),
            "-o",        "source=" + fuse_opt_escape(p.source),
            "-o",        "sandbox=namespace",
            "-o",        "log_level=warn"};
  // A user namespace cannot raise the hard limit on open files; keep the caller's.
  if (p.userns) p.args.push_back("--rlimit-nofile=0");
  return p;
}

// Reads exactly `len` bytes before `deadline`; false when the peer closed or time ran out.
bool read_until(int fd, void* buf, size_t len, std::chrono::steady_clock::time_point deadline) {
  auto* p = static_cast<uint8_t*>(buf);
  while (len > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd pfd{fd, POLLIN, 0};
    int r = ::poll(&pfd, 1, int(std::max<int64_t>(left.count(), 0)));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    ssize_t n = ::recv(fd, p, len, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return false;
    p += n;
    len -= size_t(n);
  }
  return true;
}

// One vhost-user GET_FEATURES round trip (stateless: the VMM's handshake starts afresh).
// Empty when virtiofsd answered, else what went wrong.
std::string probe(int fd, std::chrono::milliseconds timeout) {
  constexpr uint32_t kGetFeatures = 1, kVersion = 1, kReplyFlag = 4;
  const uint32_t req[3] = {kGetFeatures, kVersion, 0};
  uint32_t hdr[3];
  uint64_t features;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  if (::send(fd, req, sizeof req, MSG_NOSIGNAL) != ssize_t(sizeof req) ||
      !read_until(fd, hdr, sizeof hdr, deadline) ||
      !read_until(fd, &features, sizeof features, deadline))
    return "it did not answer (it exited, or stalled for " + std::to_string(timeout.count()) +
           " ms)";
  if (hdr[0] != kGetFeatures || !(hdr[1] & kReplyFlag) || hdr[2] != sizeof features)
    return "it sent a malformed vhost-user reply";
  return "";
}

}  // namespace

Virtiofsd Virtiofsd::start(const VirtiofsdOptions& o) {
  const fs::path source = share_source(o.source);
  const fs::path program = find_virtiofsd(o.program);
  UniqueFd listener, conn;
  {
    TempDir dir("img2vm-virtiofsd");  // mkdtemp: 0700, ours alone; gone once connected
    const fs::path sock = dir.path() / "vhost-user.sock";
    listener = listen_unix(sock);
    conn = connect_unix(sock);
  }
  auto [log_r, log_w] = make_pipe(O_NONBLOCK);  // virtiofsd never blocks on its stderr
  auto [err_r, err_w] = make_pipe(0);           // the child's failure before exec
  UniqueFd null = open_file("/dev/null", O_RDWR);
  ChildPlan p = plan(source, program, o.read_only, listener.get());
  p.log_fd = log_w.get();
  p.null_fd = null.get();
  p.err_fd = err_w.get();
  for (auto& a : p.args) p.argv.push_back(a.data());
  p.argv.push_back(nullptr);

  Virtiofsd v;
  v.source_ = source;
  v.log_ = std::move(log_r);
  const pid_t child = ::fork();
  if (child == 0) run_child(p);
  if (child < 0) throw_errno("virtiofsd for " + p.source + ": fork");
  v.pid_ = child;
  v.pidfd_.reset(static_cast<int>(::syscall(SYS_pidfd_open, child, 0)));
  err_w.reset();
  log_w.reset();
  listener.reset();
  int m[2] = {0, 0};
  ssize_t n;
  while ((n = ::read(err_r.get(), m, sizeof m)) < 0 && errno == EINTR) {
  }
  if (n == sizeof m) {
    v.stop();
    throw_child_error(p, m[0], m[1]);
  }
  v.socket_ = std::move(conn);
  if (std::string why = probe(v.socket_.get(), o.start_timeout); !why.empty()) {
    std::string tail = v.log_tail();
    throw Error(ErrorKind::kIo, "virtiofsd for " + p.source + " failed to start: " + why +
                                    (tail.empty() ? "" : ": " + tail));
  }
  return v;
}

Virtiofsd::Virtiofsd(Virtiofsd&& o) noexcept
    : pid_(std::exchange(o.pid_, 0)),
      pidfd_(std::move(o.pidfd_)),
      socket_(std::move(o.socket_)),
      log_(std::move(o.log_)),
      tail_(std::move(o.tail_)),
      source_(std::move(o.source_)) {}

Virtiofsd& Virtiofsd::operator=(Virtiofsd&& o) noexcept {
  if (this != &o) {
    stop();
    pid_ = std::exchange(o.pid_, 0);
    pidfd_ = std::move(o.pidfd_);
    socket_ = std::move(o.socket_);
    log_ = std::move(o.log_);
    tail_ = std::move(o.tail_);
    source_ = std::move(o.source_);
  }
  return *this;
}

Virtiofsd::~Virtiofsd() { stop(); }

std::string Virtiofsd::log_tail() {
  char buf[4096];
  ssize_t n;
  while (log_ && (n = ::read(log_.get(), buf, sizeof buf)) > 0) {
    tail_.append(buf, size_t(n));
    if (tail_.size() > kTailBytes) tail_.erase(0, tail_.size() - kTailBytes);
  }
  // One line: the last lines joined.
  std::string out;
  for (char c : tail_) out += (c == '\n' || c == '\r') ? ' ' : c;
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

namespace {

// True when the process behind `pidfd` ended within `timeout`.
bool ended_within(int pidfd, std::chrono::milliseconds timeout) {
  if (pidfd < 0) return false;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd pfd{pidfd, POLLIN, 0};
    int r = ::poll(&pfd, 1, int(std::max<int64_t>(left.count(), 0)));
    if (r > 0) return true;
    if (r == 0 || errno != EINTR) return false;
  }
}

}  // namespace

void Virtiofsd::stop(std::chrono::milliseconds grace) noexcept {
  socket_.reset();  // virtiofsd ends when its connection does
  if (pid_ <= 0) return;
  auto signal_it = [&](int sig) {
    if (pidfd_)
      (void)::syscall(SYS_pidfd_send_signal, pidfd_.get(), sig, nullptr, 0);
    else
      (void)::kill(pid_, sig);
  };
  signal_it(SIGTERM);
  if (!ended_within(pidfd_.get(), grace)) signal_it(SIGKILL);
  int st = 0;
  while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
  }
  pid_ = 0;
  pidfd_.reset();
}

}  // namespace img2vm::runtime
