// Child processes for tests: run a command to completion and capture its output, or keep a
// server process running and make sure it dies with the test (also when the test crashes).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace img2vm::testing {

struct CommandResult {
  int exit_code = -1;  // 128+N when killed by signal N
  std::string out;
  std::string err;
  bool timed_out = false;
  long max_rss_kb = 0;  // the child's peak resident set (getrusage's ru_maxrss, from wait4)
  // "argv[0] exited with N: <stderr>" for assertion messages.
  std::string describe() const;
};

struct RunOptions {
  std::string input;                       // written to the child's stdin
  std::map<std::string, std::string> env;  // added to (or replacing) the environment
  std::filesystem::path cwd;               // empty: inherit
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  // stdout and stderr are one new pseudo-terminal (both land in CommandResult::out, with the
  // terminal's \r\n), as for a user at a terminal; stdin stays a pipe.
  bool terminal = false;
};

// Runs argv[0] (looked up in PATH) and waits. Throws img2vm::Error if it cannot be started.
CommandResult run_command(const std::vector<std::string>& argv, const RunOptions& opts = {});

// A TCP port on 127.0.0.1 that was free when asked (another process may take it before the
// caller binds it). Throws img2vm::Error.
int free_loopback_port();
// True when something accepts TCP connections on 127.0.0.1:`port`.
bool loopback_port_accepts(int port);

// Full path of a program in PATH, or empty.
std::string find_program(const std::string& name);

// A long-running child whose stdout and stderr go to a log file. It gets SIGKILL if the test
// process dies (PR_SET_PDEATHSIG) and SIGTERM then SIGKILL when this object is destroyed.
class ChildProcess {
 public:
  ChildProcess() = default;
  ChildProcess(const std::vector<std::string>& argv, const std::filesystem::path& log,
               const std::map<std::string, std::string>& env = {});
  ChildProcess(ChildProcess&& o) noexcept;
  ChildProcess& operator=(ChildProcess&& o) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() { stop(); }

  pid_t pid() const noexcept { return pid_; }
  // True while the child has not exited (reaps it if it has).
  bool running();
  // SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status as in CommandResult.
  int stop(std::chrono::milliseconds grace = std::chrono::seconds(5));
  // SIGKILL at once (to simulate a crash).
  void kill_now();
  int exit_code() const noexcept { return exit_code_; }

 private:
  pid_t pid_ = -1;
  int exit_code_ = -1;
};

}  // namespace img2vm::testing
