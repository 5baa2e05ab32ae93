#include "img2vm/init/command.hpp"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ostream>
#include <utility>

#include "img2vm/init/sys.hpp"

namespace img2vm::init {

namespace {

std::string_view env_key(std::string_view entry) {
  auto eq = entry.find('=');
  return eq == std::string_view::npos ? entry : entry.substr(0, eq);
}

// docker treats `--entrypoint ""` (a single empty string) as "no entrypoint".
std::vector<std::string> normalized(std::vector<std::string> v) {
  if (v.size() == 1 && v[0].empty()) v.clear();
  return v;
}

std::string quoted(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string join(const std::filesystem::path& root, std::string_view guest_path) {
  std::string p(guest_path);
  while (!p.empty() && p.front() == '/') p.erase(0, 1);
  return p.empty() ? root.string() : (root / p).string();
}

// The in-guest absolute (or cwd-relative) path for `name`, below `root`.
std::string host_path(const std::filesystem::path& root, std::string_view name,
                      std::string_view cwd) {
  if (!name.empty() && name.front() == '/') return join(root, name);
  std::string base(cwd.empty() ? "/" : cwd);
  if (base.back() != '/') base += '/';
  return join(root, base + std::string(name));
}

// 0 if `file` is an executable regular file (Go's findExecutable), else an errno.
int check_executable(const std::string& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) return errno;
  if (S_ISDIR(st.st_mode)) return EISDIR;
  if ((st.st_mode & 0111) == 0) return EACCES;
  if (::geteuid() != 0 && ::access(file.c_str(), X_OK) != 0) return errno;
  return 0;
}

// Go's (and so docker's) spelling of an errno: strerror in lower case.
std::string errno_message(int err) {
  std::string m = std::strerror(err);
  if (!m.empty() && m[0] >= 'A' && m[0] <= 'Z') m[0] = static_cast<char>(m[0] - 'A' + 'a');
  return m;
}

int status_for(int err) { return (err == ENOENT || err == ENOTDIR) ? 127 : 126; }

}  // namespace

guestabi::RuntimeConfig apply_overrides(guestabi::RuntimeConfig c,
                                        const guestabi::RunOverrides& o) {
  c.entrypoint = normalized(std::move(c.entrypoint));
  if (o.entrypoint) {
    c.entrypoint = normalized(*o.entrypoint);
    c.cmd.clear();
  }
  if (o.cmd) c.cmd = *o.cmd;
  for (const auto& e : o.env) env_set(c.env, e);
  if (o.working_dir) c.working_dir = *o.working_dir;
  if (o.user) c.user = *o.user;
  if (o.hostname) c.hostname = *o.hostname;
  return c;
}

std::vector<std::string> command_line(const guestabi::RuntimeConfig& c) {
  std::vector<std::string> argv = normalized(c.entrypoint);
  argv.insert(argv.end(), c.cmd.begin(), c.cmd.end());
  if (argv.empty()) throw Error("no command specified");
  return argv;
}

void env_set(std::vector<std::string>& env, std::string_view entry) {
  std::string_view key = env_key(entry);
  for (auto& e : env) {
    if (env_key(e) == key) {
      e = std::string(entry);
      return;
    }
  }
  env.emplace_back(entry);
}

std::optional<std::string> env_get(const std::vector<std::string>& env, std::string_view key) {
  for (const auto& e : env) {
    auto eq = e.find('=');
    if (eq != std::string::npos && std::string_view(e).substr(0, eq) == key)
      return e.substr(eq + 1);
  }
  return std::nullopt;
}

std::vector<std::string> workload_env(const std::vector<std::string>& config_env,
                                      std::string_view hostname, bool tty, std::string_view home) {
  std::vector<std::string> env;
  env.push_back("PATH=" + std::string(kDefaultPath));
  env.push_back("HOSTNAME=" + std::string(hostname));
  if (tty) env.emplace_back("TERM=xterm");
  for (const auto& e : config_env) {
    if (e.find('=') == std::string::npos) continue;  // docker ignores entries without a value
    env_set(env, e);
  }
  if (!env_get(env, "HOME")) env.push_back("HOME=" + std::string(home.empty() ? "/" : home));
  return env;
}

std::variant<std::string, ExecFailure> find_executable(const std::filesystem::path& root,
                                                       std::string_view name,
                                                       std::string_view path_env,
                                                       std::string_view cwd) {
  if (name.empty()) return ExecFailure{127, "exec: \"\": executable file not found in $PATH"};
  if (name.find('/') != std::string_view::npos) {
    int err = check_executable(host_path(root, name, cwd));
    if (err == 0) return std::string(name);
    std::string why = errno_message(err);
    if (err == ENOENT || err == ENOTDIR) why = "stat " + std::string(name) + ": " + why;
    return ExecFailure{status_for(err), "exec: " + quoted(name) + ": " + why};
  }
  std::size_t start = 0;
  while (true) {
    std::size_t end = path_env.find(':', start);
    std::string_view dir = path_env.substr(
        start, end == std::string_view::npos ? std::string_view::npos : end - start);
    // Relative elements are relative to the working directory, as execve resolves them.
    std::string candidate = (dir.empty() || dir == ".")
                                ? "./" + std::string(name)
                                : std::string(dir) + "/" + std::string(name);
    if (check_executable(host_path(root, candidate, cwd)) == 0) return candidate;
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return ExecFailure{127, "exec: " + quoted(name) + ": executable file not found in $PATH"};
}

std::ostream& operator<<(std::ostream& os, const ExecFailure& f) {
  return os << "{" << f.status << ", " << quoted(f.message) << "}";
}

ExecFailure exec_failure(std::string_view path, int err) {
  return ExecFailure{status_for(err), "exec " + std::string(path) + ": " + errno_message(err)};
}

std::optional<int> parse_signal(std::string_view name) {
  static constexpr std::pair<std::string_view, int> kSignals[] = {
      {"HUP", SIGHUP},       {"INT", SIGINT},   {"QUIT", SIGQUIT},     {"ILL", SIGILL},
      {"TRAP", SIGTRAP},     {"ABRT", SIGABRT}, {"IOT", SIGIOT},       {"BUS", SIGBUS},
      {"FPE", SIGFPE},       {"KILL", SIGKILL}, {"USR1", SIGUSR1},     {"SEGV", SIGSEGV},
      {"USR2", SIGUSR2},     {"PIPE", SIGPIPE}, {"ALRM", SIGALRM},     {"TERM", SIGTERM},
      {"STKFLT", SIGSTKFLT}, {"CHLD", SIGCHLD}, {"CONT", SIGCONT},     {"STOP", SIGSTOP},
      {"TSTP", SIGTSTP},     {"TTIN", SIGTTIN}, {"TTOU", SIGTTOU},     {"URG", SIGURG},
      {"XCPU", SIGXCPU},     {"XFSZ", SIGXFSZ}, {"VTALRM", SIGVTALRM}, {"PROF", SIGPROF},
      {"WINCH", SIGWINCH},   {"IO", SIGIO},     {"POLL", SIGPOLL},     {"PWR", SIGPWR},
      {"SYS", SIGSYS},
  };
  if (name.empty()) return std::nullopt;
  if (name.find_first_not_of("0123456789") == std::string_view::npos) {
    if (name.size() > 2) return std::nullopt;
    int n = std::stoi(std::string(name));
    if (n >= 1 && n <= 64) return n;
    return std::nullopt;
  }
  std::string upper;
  for (char c : name) upper += (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
  std::string_view n = upper;
  if (n.starts_with("SIG")) n.remove_prefix(3);
  for (const auto& [sig_name, number] : kSignals)
    if (sig_name == n) return number;
  if (n.starts_with("RTMIN") || n.starts_with("RTMAX")) {
    bool min = n.starts_with("RTMIN");
    std::string_view rest = n.substr(5);
    int base = min ? SIGRTMIN : SIGRTMAX;
    if (rest.empty()) return base;
    if (rest.size() < 2 || (rest[0] != '+' && rest[0] != '-') ||
        rest.substr(1).find_first_not_of("0123456789") != std::string_view::npos || rest.size() > 3)
      return std::nullopt;
    int off = std::stoi(std::string(rest.substr(1)));
    int sig = rest[0] == '+' ? base + off : base - off;
    if (sig >= SIGRTMIN && sig <= SIGRTMAX) return sig;
  }
  return std::nullopt;
}

}  // namespace img2vm::init
