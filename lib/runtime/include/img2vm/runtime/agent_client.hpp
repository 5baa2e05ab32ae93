// The host side of the guest's exec agent (docs/guest-abi.md §6): connect to a running VM's
// vsock socket (docs/vm.md "vsock"), then exec a command in it with its stdio streamed, signal
// its workload, ask its status or start it. The library never prints, exits or installs signal
// handlers; errors are img2vm::Error naming the socket.
//
//   auto conn = img2vm::runtime::connect_agent(vm_dir / "vsock.sock", std::chrono::seconds(5));
//   img2vm::guestabi::ExecRequest req;
//   req.args = {"sh", "-c", "echo hi"};
//   img2vm::runtime::ExecSession session(std::move(conn), req);
//   img2vm::runtime::ExecResult r = session.run(-1, 1, 2);  // r.status: 0-255
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>

#include "img2vm/base/fd.hpp"
#include "img2vm/guestabi/agent.hpp"

namespace img2vm::runtime {

// A stream to the guest's agent, past the VMM's handshake.
struct AgentConnection {
  UniqueFd fd;                   // the unix socket, now the stream to the guest
  std::string leftover;          // stream bytes that came with the handshake's answer
  std::filesystem::path socket;  // for messages
};

// Connects to the VMM's vsock socket `vsock_uds` and asks for guest port `port` (`CONNECT P`,
// answered `OK <host port>`). The whole handshake is bounded by `timeout`; refusals (the guest
// has no listener on the port yet: the VMM closes without an answer) are retried within it, so
// a VM that has just started is waited for. Throws Error naming the socket: kNotFound when
// nothing listens there, kNetwork when the VMM still refuses or `timeout` passes, kIntegrity for
// an answer that is not `OK <number>`.
AgentConnection connect_agent(const std::filesystem::path& vsock_uds,
                              std::chrono::milliseconds timeout,
                              uint32_t port = guestabi::kAgentPort);

// How an exec ended: the status 0-255 (128+N: killed by signal N), and `error` when the command
// could not be started (status 126 or 127, docker exec's).
struct ExecResult {
  int status = 0;
  std::string error;
};

// One exec: sends the request at construction, then run() streams until the exit frame.
// resize() and signal() may be called from any other thread while run() runs (or before).
class ExecSession {
 public:
  // Nothing is sent before run(). Throws Error(kInvalidArgument) when the request has no frame
  // (larger than the protocol allows, a string not UTF-8).
  ExecSession(AgentConnection conn, const guestabi::ExecRequest& request);
  ExecSession(const ExecSession&) = delete;
  ExecSession& operator=(const ExecSession&) = delete;
  ~ExecSession();

  // Streams: `in_fd` (read until end of file, then the process's stdin is closed; -1 or a
  // request without stdin: nothing is read) to the guest, its stdout to `out_fd` and stderr to
  // `err_fd` (blocking writes; -1 discards). Returns when the exit frame arrives; no timeout:
  // the exec may run as long as it likes. Throws Error when the connection breaks, the agent
  // refuses the request (its message) or sends anything outside the protocol, or a write to
  // `out_fd`/`err_fd` fails. Call once.
  ExecResult run(int in_fd, int out_fd, int err_fd);

  // The tty's new size (ignored without a tty). Thread-safe.
  void resize(uint16_t rows, uint16_t cols);
  // A signal 1-64 for the exec'd process. Thread-safe; throws Error(kInvalidArgument) for
  // another number.
  void signal(int sig);

 private:
  void queue(std::string frame);

  AgentConnection conn_;
  bool stdin_ = false;  // the request's open_stdin
  UniqueFd wake_;       // eventfd: control frames are queued
  std::mutex mu_;
  std::string control_;  // queued frames, under mu_
};

// connect_agent + request + run in one call.
ExecResult exec(const std::filesystem::path& vsock_uds, std::chrono::milliseconds timeout,
                const guestabi::ExecRequest& request, int in_fd, int out_fd, int err_fd);

// Sends signal `sig` (1-64) to the VM's workload. Throws Error with the agent's message when it
// could not. `timeout` bounds the handshake and the answer.
void signal_workload(const std::filesystem::path& vsock_uds, int sig,
                     std::chrono::milliseconds timeout);

// Sends the workload the image's StopSignal (docker stop's first step). Throws Error with the
// agent's message when it could not. `timeout` bounds the handshake and the answer.
void stop_workload(const std::filesystem::path& vsock_uds, std::chrono::milliseconds timeout);

// OCI start: lets the workload of a VM created with guestabi::RunOverrides::wait_for_start exec
// (the agent's op "start"). Throws Error with the agent's message when it was not waiting (it
// started already: "start: the workload has already started") or could not be started.
// `timeout` bounds the handshake (retried while the agent does not listen yet) and the answer.
void start_workload(const std::filesystem::path& vsock_uds, std::chrono::milliseconds timeout);

// The workload's pid in the guest and whether it still runs. `timeout` bounds the handshake and
// the answer.
guestabi::AgentResponse agent_status(const std::filesystem::path& vsock_uds,
                                     std::chrono::milliseconds timeout);

}  // namespace img2vm::runtime
