// The exec agent (docs/guest-abi.md §6): a child of PID 1 that listens on vsock port
// guestabi::kAgentPort and serves each connection in a process of its own: exec a command beside
// the workload (docker exec), signal the workload, report its status.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace img2vm::init {

// The agent's end of the workload's start gate (OCI create/start, guestabi::RunOverrides::
// wait_for_start): the write end of the pipe the workload's process reads one byte from before
// it execs, and a flag in memory shared (MAP_SHARED) with every process forked after the gate
// was made, as the agent's connection handlers are: only the first "start" writes the byte.
// Copies share the flag. The fd is not owned.
class StartGate {
 public:
  // Throws Error when the shared flag cannot be mapped.
  explicit StartGate(int write_fd);
  // Opens the gate: writes the byte and closes this process's copy of the fd. Returns "" when
  // this call did; else the refusal for the host ("start: the workload has already started",
  // or why the write failed). Needs SIGPIPE ignored (a workload that died is EPIPE).
  std::string open() const;

 private:
  int fd_;
  std::shared_ptr<std::atomic<bool>> opened_;
};

// What PID 1 computed for the workload, an exec's defaults (as docker exec takes the container's
// config).
struct AgentContext {
  pid_t workload_pid = 0;
  int stop_signal = 15;
  // The host relies on the agent (a detached VM): failing to listen is worth a warning on the
  // console. Otherwise (an attached run, which may have no vsock device) the agent ends quietly.
  bool expected = false;
  std::vector<std::string> config_env;  // the config's Env after -e (workload_env() adds the rest)
  std::string hostname;
  std::string user;                  // the User spec ("" root), resolved again for each exec
  std::string workdir;               // absolute
  std::filesystem::path root = "/";  // where the guest's / is (users and PATH are looked up)
  // The workload waits for op "start" (wait_for_start); none: "start" is refused.
  std::optional<StartGate> start;
};

// Serves one connection on the connected stream socket `fd` (the agent's frames, one request)
// and returns when it is over; `fd` stays open (the caller closes it). Meant for a process of
// its own: it forks the exec'd command, waits for its children and ignores SIGPIPE. Never throws:
// a malformed request or frame is answered with a kResponse error frame and ends the connection.
// When the host side goes away before the exec'd process ended, that process's group is killed
// (SIGKILL).
void serve_connection(int fd, const AgentContext& ctx) noexcept;

// Accepts on the listening stream socket `listen_fd` forever, each connection served by a forked
// child (serve_connection); at most guestabi::kMaxAgentConnections at once, a connection beyond
// that gets a kResponse error and is closed. Returns only when accept fails for good (the error
// in errno).
void serve_listener(int listen_fd, const AgentContext& ctx);

// The agent process, forked by PID 1 after the workload: default signal dispositions and mask,
// listens on AF_VSOCK (any CID) port kAgentPort and serves it. Without vsock (an old kernel, no
// device) it prints one warning line on stderr and exits; the workload is unaffected.
[[noreturn]] void run_agent(const AgentContext& ctx);

}  // namespace img2vm::init
