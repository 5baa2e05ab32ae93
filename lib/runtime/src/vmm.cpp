#include "img2vm/runtime/vmm.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "img2vm/vm/machine_json.hpp"
#include "locate.hpp"

namespace img2vm::runtime {

namespace fs = std::filesystem;

fs::path find_vmm_binary() {
  return detail::locate(
      "IMG2VM_VMM", "the VMM",
      {detail::beside_own_install("img2vm-vmm"), fs::path(IMG2VM_INSTALL_LIBEXECDIR) / "img2vm-vmm",
       detail::beside_own_program("img2vm-vmm"), fs::path(IMG2VM_BUILD_VMM)},
      "the VMM program (img2vm-vmm) is missing: build the img2vm-vmm target or set IMG2VM_VMM");
}

fs::path find_netns_binary() {
  return detail::locate(
      "IMG2VM_NETNS", "the network namespace helper",
      {detail::beside_own_install("img2vm-netns"),
       fs::path(IMG2VM_INSTALL_LIBEXECDIR) / "img2vm-netns",
       detail::beside_own_program("img2vm-netns"), fs::path(IMG2VM_BUILD_NETNS)},
      "the network namespace helper (img2vm-netns) is missing: build the img2vm-netns target or "
      "set IMG2VM_NETNS");
}

std::string restore_netns_in_child(const std::string& state, std::chrono::milliseconds timeout) {
  try {
    const fs::path prog = find_netns_binary();
    UniqueFd in = sealed_memfd("img2vm-netns-state", state);
    if (::lseek(in.get(), 0, SEEK_SET) != 0)
      throw_errno("lseek");  // its stdin, read from the start
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw_errno("pipe");
    UniqueFd out_rd(p[0]), out_wr(p[1]);
    const char* argv[] = {"img2vm-netns", "restore", nullptr};
    sigset_t none;
    sigemptyset(&none);
    const pid_t child = ::fork();
    if (child == 0) {
      // Only async-signal-safe calls between fork and exec; nothing but stdio reaches it.
      if (::dup2(in.get(), STDIN_FILENO) < 0 || ::dup2(out_wr.get(), STDOUT_FILENO) < 0 ||
          ::dup2(out_wr.get(), STDERR_FILENO) < 0)
        ::_exit(127);
      (void)::close_range(3, ~0u, CLOSE_RANGE_CLOEXEC);
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      ::sigaction(SIGCHLD, &dfl, nullptr);
      ::sigaction(SIGPIPE, &dfl, nullptr);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::execv(prog.c_str(), const_cast<char* const*>(argv));
      static constexpr char kExecFailed[] = "cannot run img2vm-netns\n";
      (void)!::write(STDERR_FILENO, kExecFailed, sizeof kExecFailed - 1);
      ::_exit(127);
    }
    if (child < 0) throw_errno("cannot run img2vm-netns: fork");
    out_wr.reset();
    in.reset();
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, child, 0)));
    auto reap = [child] {
      int ws = 0;
      while (::waitpid(child, &ws, 0) < 0 && errno == EINTR) {
      }
      return ws;
    };
    if (!pidfd) {
      const int e = errno;
      ::kill(child, SIGKILL);
      reap();
      throw_errno("pidfd_open", e);
    }
    // Its output, the first 4 KiB kept (its error is one line), until it exits or time is up.
    std::string out;
    auto read_out = [&] {
      char buf[4096];
      ssize_t n = ::read(out_rd.get(), buf, sizeof buf);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) return false;
      if (n <= 0) {
        out_rd.reset();
        return false;
      }
      if (out.size() < 4096) out.append(buf, size_t(n));
      return true;
    };
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const auto left =
          std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        ::kill(child, SIGKILL);
        reap();
        return "img2vm-netns did not finish within " + std::to_string(timeout.count()) +
               " ms: killed";
      }
      struct pollfd pf[2] = {{out_rd ? out_rd.get() : -1, POLLIN, 0}, {pidfd.get(), POLLIN, 0}};
      if (::poll(pf, 2, int(std::min<int64_t>(left.count(), 1 << 30))) < 0) {
        if (errno == EINTR) continue;
        const int e = errno;
        ::kill(child, SIGKILL);
        reap();
        throw_errno("poll", e);
      }
      if (pf[0].revents) read_out();
      if (pf[1].revents) break;
    }
    const int ws = reap();
    if (out_rd) {
      (void)::fcntl(out_rd.get(), F_SETFL, O_NONBLOCK);
      while (out_rd && read_out()) {
      }
    }
    if (WIFEXITED(ws) && WEXITSTATUS(ws) == 0) return "";
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r' || out.back() == ' '))
      out.pop_back();
    if (const size_t nl = out.rfind('\n'); nl != std::string::npos) out.erase(0, nl + 1);
    if (!out.empty()) return out;
    if (WIFSIGNALED(ws)) return "img2vm-netns was killed by signal " + std::to_string(WTERMSIG(ws));
    return "img2vm-netns exited with status " + std::to_string(WEXITSTATUS(ws));
  } catch (const std::exception& e) {
    return e.what();
  }
}

UniqueFd sealed_memfd(const char* name, const std::string& bytes, uint64_t size) {
  UniqueFd fd(::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) throw_errno("memfd_create");
  write_all(fd.get(), bytes, name);
  if (size > bytes.size() && ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0)
    throw_errno(std::string("sizing ") + name);
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0)
    throw_errno("sealing a memfd");
  return fd;
}

std::string vmm_spec(const vm::MachineConfig& config, const std::string& attach,
                     const std::string& summary) {
  std::string machine;
  try {
    machine = vm::machine_config_to_json(config);
  } catch (const std::exception& e) {  // nlohmann's: a string that is not UTF-8
    throw Error(ErrorKind::kInvalidArgument, std::string("the VM has no JSON form: ") + e.what());
  }
  std::string spec = "{\"machine\":" + machine;
  if (!attach.empty()) spec += ",\"attach\":" + attach;
  if (!summary.empty()) spec += ",\"summary\":" + summary;
  return spec + "}";
}

namespace {

// The descriptors a spec's machine refers to, which the child must keep: its /proc/self/fd/N
// disks and initrd, its tap device and its virtio-fs sockets.
std::vector<int> config_fds(const std::string& spec) {
  std::vector<int> fds;
  auto j = nlohmann::json::parse(spec, nullptr, false);
  if (!j.is_object() || !j.contains("machine") || !j["machine"].is_object())
    throw Error(ErrorKind::kInvalidArgument, "VM spec: no \"machine\" object");
  const auto& m = j["machine"];
  auto fd_path = [&](const nlohmann::json& v) {
    if (!v.is_string()) return;
    const std::string path = v.get<std::string>();
    const std::string prefix = "/proc/self/fd/";
    if (path.rfind(prefix, 0) != 0) return;
    const char* p = path.c_str() + prefix.size();
    char* end = nullptr;
    long fd = std::strtol(p, &end, 10);
    if (end != p && *end == '\0' && fd > 2 && fd < (1 << 20)) fds.push_back(int(fd));
  };
  if (m.contains("disks") && m["disks"].is_array())
    for (const auto& d : m["disks"])
      if (d.is_object() && d.contains("path")) fd_path(d["path"]);
  if (m.contains("initrd")) fd_path(m["initrd"]);
  if (m.contains("net") && m["net"].is_object() && m["net"].contains("tap") &&
      m["net"]["tap"].is_object() && m["net"]["tap"].contains("fd") &&
      m["net"]["tap"]["fd"].is_number_integer())
    fds.push_back(m["net"]["tap"]["fd"].get<int>());
  if (m.contains("fs") && m["fs"].is_array())
    for (const auto& f : m["fs"])
      if (f.is_object() && f.contains("socket_fd") && f["socket_fd"].is_number_integer())
        fds.push_back(f["socket_fd"].get<int>());
  return fds;
}

ExitStatus status_of(int wstatus) {
  ExitStatus s;
  if (WIFEXITED(wstatus)) {
    s.exited = true;
    s.code = WEXITSTATUS(wstatus);
  } else if (WIFSIGNALED(wstatus)) {
    s.signal = WTERMSIG(wstatus);
  }
  return s;
}

}  // namespace

VmmProcess VmmProcess::start(const std::string& spec, const VmmChildOptions& o) {
  struct sigaction chld {};
  ::sigaction(SIGCHLD, nullptr, &chld);
  if (chld.sa_handler == SIG_IGN || (chld.sa_flags & SA_NOCLDWAIT))
    throw Error(ErrorKind::kInvalidArgument,
                "cannot start the VMM: SIGCHLD is ignored in this process, so its children cannot "
                "be waited for");
  const fs::path vmm = o.vmm.empty() ? find_vmm_binary() : o.vmm;
  UniqueFd spec_fd = sealed_memfd("img2vm-vm-spec", spec);
  std::vector<int> pass = config_fds(spec);
  pass.insert(pass.end(), o.pass_fds.begin(), o.pass_fds.end());
  pass.push_back(spec_fd.get());
  // The child reports a failed exec on this pipe (closed by a successful one).
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw_errno("pipe");
  UniqueFd err_rd(p[0]), err_wr(p[1]);
  const std::string fd_arg = std::to_string(spec_fd.get());
  const char* argv[] = {"img2vm-vmm", "--spec-fd", fd_arg.c_str(), nullptr};
  sigset_t mask;
  if (o.sigmask) {
    mask = *o.sigmask;
  } else {
    sigemptyset(&mask);
  }
  const pid_t parent = ::getpid();
  const pid_t child = ::fork();
  if (child == 0) {
    // Only async-signal-safe calls between fork and exec. Nothing but stdio, the error pipe
    // (close-on-exec) and `pass` reaches the VMM.
    (void)::close_range(3, ~0u, CLOSE_RANGE_CLOEXEC);
    for (int fd : pass) (void)::fcntl(fd, F_SETFD, 0);
    int err = 0;
    if (o.kill_with_caller) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // kept across a setuid in the VMM
      if (::getppid() != parent) ::_exit(125);
    }
    if (o.output_fd >= 0 &&
        (::dup2(o.output_fd, STDOUT_FILENO) < 0 || ::dup2(o.output_fd, STDERR_FILENO) < 0))
      ::_exit(125);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(SIGCHLD, &dfl, nullptr);
    ::sigaction(SIGPIPE, &dfl, nullptr);
    ::sigprocmask(SIG_SETMASK, &mask, nullptr);
    ::execv(vmm.c_str(), const_cast<char* const*>(argv));
    err = errno;
    (void)!::write(err_wr.get(), &err, sizeof err);
    ::_exit(125);
  }
  if (child < 0) throw_errno("cannot start the VMM: fork");
  err_wr.reset();
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, child, 0)));
  VmmProcess proc(child, std::move(pidfd));
  int err = 0;
  ssize_t n;
  while ((n = ::read(err_rd.get(), &err, sizeof err)) < 0 && errno == EINTR) {
  }
  if (n == sizeof err) {
    proc.wait();
    throw_errno("cannot start the VMM " + vmm.string(), err);
  }
  if (!proc.pidfd_) {
    int e = errno;
    proc.signal(SIGKILL);
    proc.wait();
    throw_errno("pidfd_open", e);
  }
  return proc;
}

VmmProcess::VmmProcess(VmmProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, 0)),
      pidfd_(std::move(other.pidfd_)),
      status_(std::move(other.status_)) {}

VmmProcess& VmmProcess::operator=(VmmProcess&& other) noexcept {
  if (this != &other) {
    end();
    pid_ = std::exchange(other.pid_, 0);
    pidfd_ = std::move(other.pidfd_);
    status_ = std::move(other.status_);
  }
  return *this;
}

VmmProcess::~VmmProcess() { end(); }

void VmmProcess::end() noexcept {
  if (pid_ <= 0) return;
  if (pidfd_)
    (void)::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
  else
    (void)::kill(pid_, SIGKILL);
  int st = 0;
  while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
  }
  pid_ = 0;
}

void VmmProcess::signal(int sig) {
  if (pid_ <= 0) return;
  // Through the pidfd: never a recycled process id.
  if (pidfd_) {
    if (::syscall(SYS_pidfd_send_signal, pidfd_.get(), sig, nullptr, 0) != 0 && errno != ESRCH)
      throw_errno("cannot signal the VMM");
  } else if (::kill(pid_, sig) != 0 && errno != ESRCH) {
    throw_errno("cannot signal the VMM");
  }
}

std::optional<ExitStatus> VmmProcess::try_wait() {
  if (status_) return status_;
  if (pid_ <= 0) return std::nullopt;
  int st = 0;
  pid_t r;
  while ((r = ::waitpid(pid_, &st, WNOHANG)) < 0 && errno == EINTR) {
  }
  if (r < 0) throw_errno("waiting for the VMM");
  if (r == 0) return std::nullopt;
  pid_ = 0;
  status_ = status_of(st);
  return status_;
}

std::optional<ExitStatus> VmmProcess::wait_for(std::chrono::milliseconds timeout) {
  if (auto s = try_wait()) return s;
  if (pid_ <= 0) return std::nullopt;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    struct pollfd pfd {
      pidfd_.get(), POLLIN, 0
    };
    int r = ::poll(&pfd, 1, static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1 << 30)));
    if (r < 0 && errno != EINTR) throw_errno("waiting for the VMM");
    if (auto s = try_wait()) return s;
    if (left.count() <= 0) return std::nullopt;
  }
}

ExitStatus VmmProcess::wait() {
  if (status_) return *status_;
  if (pid_ <= 0) throw Error(ErrorKind::kInvalidArgument, "no VMM to wait for");
  int st = 0;
  while (::waitpid(pid_, &st, 0) < 0) {
    if (errno != EINTR) throw_errno("waiting for the VMM");
  }
  pid_ = 0;
  status_ = status_of(st);
  return *status_;
}

ExitStatus VmmProcess::stop(std::chrono::milliseconds grace) {
  if (status_) return *status_;
  signal(SIGTERM);
  if (auto s = wait_for(grace)) return *s;
  signal(SIGKILL);
  return wait();
}

std::unique_ptr<vm::Machine> start_in_process(vm::MachineConfig config) {
  auto m = std::make_unique<vm::Machine>(std::move(config));
  m->start();
  return m;
}

}  // namespace img2vm::runtime
