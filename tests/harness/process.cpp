#include "process.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

extern char** environ;

namespace img2vm::testing {

namespace fs = std::filesystem;
using namespace std::chrono;

std::string CommandResult::describe() const {
  std::string s = timed_out ? "timed out" : "exited with " + std::to_string(exit_code);
  if (!err.empty()) s += "; stderr: " + err;
  if (!out.empty() && out.size() < 4000) s += "; stdout: " + out;
  return s;
}

std::string find_program(const std::string& name) {
  if (name.find('/') != std::string::npos) return access(name.c_str(), X_OK) == 0 ? name : "";
  const char* path = getenv("PATH");
  std::string p = path ? path : "/usr/bin:/bin";
  p += ":/usr/sbin:/sbin";
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find(':', start);
    if (end == std::string::npos) end = p.size();
    std::string dir = p.substr(start, end - start);
    if (!dir.empty()) {
      std::string cand = dir + "/" + name;
      if (access(cand.c_str(), X_OK) == 0) return cand;
    }
    start = end + 1;
  }
  return "";
}

namespace {

int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Builds envp: the current environment with `extra` overriding.
std::vector<std::string> make_env(const std::map<std::string, std::string>& extra) {
  std::vector<std::string> out;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    auto eq = kv.find('=');
    if (eq != std::string::npos && extra.count(kv.substr(0, eq))) continue;
    out.push_back(std::move(kv));
  }
  for (const auto& [k, v] : extra) out.push_back(k + "=" + v);
  return out;
}

std::vector<char*> cstrs(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// fork + exec with the three standard descriptors given; the child dies with its parent.
pid_t spawn(const std::vector<std::string>& argv_in,
            const std::map<std::string, std::string>& env_extra, const fs::path& cwd, int in_fd,
            int out_fd, int err_fd) {
  if (argv_in.empty()) throw Error(ErrorKind::kInternal, "spawn: empty argv");
  std::string prog = find_program(argv_in[0]);
  if (prog.empty()) throw Error(ErrorKind::kNotFound, "program not found in PATH: " + argv_in[0]);
  std::vector<std::string> argv = argv_in;
  std::vector<std::string> env = make_env(env_extra);
  auto argv_c = cstrs(argv);
  auto env_c = cstrs(env);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) throw_errno("fork");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    // Put the child in its own process group so that stop() reaches its children too.
    setpgid(0, 0);
    if (in_fd >= 0) dup2(in_fd, 0);
    if (out_fd >= 0) dup2(out_fd, 1);
    if (err_fd >= 0) dup2(err_fd, 2);
    if (!cwd.empty() && chdir(cwd.c_str()) != 0) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execve(prog.c_str(), argv_c.data(), env_c.data());
    _exit(127);
  }
  return pid;
}

}  // namespace

CommandResult run_command(const std::vector<std::string>& argv, const RunOptions& opts) {
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) throw_errno("pipe");
  UniqueFd in_r(in[0]), in_w(in[1]), out_r(out[0]), out_w(out[1]), err_r(err[0]), err_w(err[1]);
  if (opts.terminal) {
    // The master reads what the child writes to the slave, and EIO once no one holds it.
    UniqueFd master(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!master || ::grantpt(master.get()) != 0 || ::unlockpt(master.get()) != 0)
      throw_errno("posix_openpt");
    const char* name = ::ptsname(master.get());
    if (!name) throw_errno("ptsname");
    out_w.reset(::open(name, O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!out_w) throw_errno(std::string("open ") + name);
    out_r = std::move(master);
    err_r.reset();
    err_w.reset(::dup(out_w.get()));
  }
  pid_t pid = spawn(argv, opts.env, opts.cwd, in_r.get(), out_w.get(), err_w.get());
  in_r.reset();
  out_w.reset();
  err_w.reset();
  fcntl(in_w.get(), F_SETFL, O_NONBLOCK);
  signal(SIGPIPE, SIG_IGN);

  CommandResult r;
  std::string_view input = opts.input;
  if (input.empty()) in_w.reset();
  auto deadline = steady_clock::now() + opts.timeout;
  while (out_r || err_r) {
    pollfd fds[3];
    int n = 0;
    if (out_r) fds[n++] = {out_r.get(), POLLIN, 0};
    if (err_r) fds[n++] = {err_r.get(), POLLIN, 0};
    if (in_w) fds[n++] = {in_w.get(), POLLOUT, 0};
    auto left = duration_cast<milliseconds>(deadline - steady_clock::now()).count();
    if (left <= 0) {
      r.timed_out = true;
      kill(-pid, SIGKILL);
      kill(pid, SIGKILL);
      break;
    }
    int pr = poll(fds, n, static_cast<int>(std::min<long>(left, 1000)));
    if (pr < 0 && errno != EINTR) throw_errno("poll");
    for (int i = 0; i < n; ++i) {
      if (!fds[i].revents) continue;
      if (in_w && fds[i].fd == in_w.get()) {
        ssize_t w = write(in_w.get(), input.data(), input.size());
        if (w > 0) input.remove_prefix(static_cast<size_t>(w));
        if (w < 0 && errno != EAGAIN) input = {};
        if (input.empty()) in_w.reset();
        continue;
      }
      char buf[65536];
      ssize_t got = read(fds[i].fd, buf, sizeof buf);
      bool is_out = out_r && fds[i].fd == out_r.get();
      if (got > 0) {
        (is_out ? r.out : r.err).append(buf, static_cast<size_t>(got));
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        (is_out ? out_r : err_r).reset();
      }
    }
  }
  in_w.reset();
  int status = 0;
  struct rusage ru {};
  while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
  }
  r.exit_code = decode_status(status);
  r.max_rss_kb = ru.ru_maxrss;
  return r;
}

ChildProcess::ChildProcess(const std::vector<std::string>& argv, const fs::path& log,
                           const std::map<std::string, std::string>& env) {
  UniqueFd logfd = open_file(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
  UniqueFd devnull = open_file("/dev/null", O_RDONLY);
  pid_ = spawn(argv, env, {}, devnull.get(), logfd.get(), logfd.get());
}

ChildProcess::ChildProcess(ChildProcess&& o) noexcept : pid_(o.pid_), exit_code_(o.exit_code_) {
  o.pid_ = -1;
}

ChildProcess& ChildProcess::operator=(ChildProcess&& o) noexcept {
  if (this != &o) {
    stop();
    pid_ = o.pid_;
    exit_code_ = o.exit_code_;
    o.pid_ = -1;
  }
  return *this;
}

bool ChildProcess::running() {
  if (pid_ < 0) return false;
  int status;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exit_code_ = decode_status(status);
    pid_ = -1;
    return false;
  }
  return true;
}

int ChildProcess::stop(milliseconds grace) {
  if (!running()) return exit_code_;
  kill(-pid_, SIGTERM);
  kill(pid_, SIGTERM);
  auto deadline = steady_clock::now() + grace;
  while (steady_clock::now() < deadline) {
    if (!running()) return exit_code_;
    std::this_thread::sleep_for(milliseconds(20));
  }
  kill_now();
  return exit_code_;
}

void ChildProcess::kill_now() {
  if (pid_ < 0) return;
  kill(-pid_, SIGKILL);
  kill(pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  exit_code_ = decode_status(status);
  pid_ = -1;
}

int free_loopback_port() {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) throw_errno("socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    throw_errno("bind 127.0.0.1:0");
  socklen_t len = sizeof a;
  if (::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
    throw_errno("getsockname");
  return ntohs(a.sin_port);
}

bool loopback_port_accepts(int port) {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(uint16_t(port));
  return s && ::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
}

}  // namespace img2vm::testing
