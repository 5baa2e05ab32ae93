// Running a prepared machine: in this process (vm::Machine, its own threads) or in the
// img2vm-vmm program as a child process, which holds only the runner's code next to the
// guest. Either way the caller starts, waits and stops; the library installs no signal
// handler, never exits and never prints.
//
//   auto vmm = img2vm::runtime::VmmProcess::start(img2vm::runtime::vmm_spec(pm.config));
//   img2vm::runtime::ExitStatus st = vmm.wait();      // or vmm.stop(std::chrono::seconds(10))
//   return st.host_exit_code();
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "img2vm/base/fd.hpp"
#include "img2vm/vm/machine.hpp"

namespace img2vm::runtime {

// Where img2vm-vmm is: $IMG2VM_VMM, else libexec/img2vm/ of the prefix the running program is
// installed in (so a moved install finds its own), else the configured install's libexec
// directory, else beside the running program, else this build tree's. Throws Error(kNotFound)
// naming what is missing.
std::filesystem::path find_vmm_binary();

// Where img2vm-netns is (a detached VM's monitor restores a container engine's network namespace
// with it): $IMG2VM_NETNS, else the places find_vmm_binary() looks in, in its order. Throws
// Error(kNotFound) naming what is missing.
std::filesystem::path find_netns_binary();

// Runs `img2vm-netns restore` (find_netns_binary()) on `state` (vm::NetnsTap::restore_state()'s
// text, given on its stdin) and waits for it, at most `timeout`: then it is killed (SIGKILL).
// Returns "" when it restored the namespace (or had nothing to do), else one line saying why not
// (its own line from stderr when it gave one); never throws. The caller's SIGCHLD must not be
// ignored.
std::string restore_netns_in_child(const std::string& state, std::chrono::milliseconds timeout);

// A read-only, sealed in-memory file holding `bytes` (close-on-exec): a disk or a spec that a
// child reads through its descriptor, with no file to clean up. With `size` larger than the bytes,
// the file is that long, zeros after them (holes: they take no memory).
UniqueFd sealed_memfd(const char* name, const std::string& bytes, uint64_t size = 0);

// The spec img2vm-vmm runs: {"machine": config, ...}; `attach` and `summary` (JSON object
// texts, may be empty) are its optional members (docs/vm.md, "The VMM process"). Throws
// Error(kInvalidArgument) when the config has no JSON form (a path that is not UTF-8).
std::string vmm_spec(const vm::MachineConfig& config, const std::string& attach = "",
                     const std::string& summary = "");

// How a child VMM ended.
struct ExitStatus {
  bool exited = false;  // it exited (else it was killed by `signal`)
  int code = 0;         // its exit code: the workload's, or 122-125/130 (docs/cli.md)
  int signal = 0;       // the signal that killed it
  // The code a docker-style caller reports: `code`, or 125 when it was killed.
  int host_exit_code() const noexcept { return exited ? code : 125; }
};

// How the child VMM is started.
struct VmmChildOptions {
  std::filesystem::path vmm;  // empty: find_vmm_binary()
  // Descriptors the child keeps besides stdio and the spec: the config's /proc/self/fd/N disks,
  // tap descriptor and virtio-fs sockets are kept without being named here.
  std::vector<int> pass_fds;
  // The child's signal mask; default: nothing blocked.
  std::optional<sigset_t> sigmask;
  // Kill the child (SIGKILL) when the thread that started it ends (PR_SET_PDEATHSIG: a thread,
  // not the process; start it from a thread that outlives the VM).
  bool kill_with_caller = true;
  // When >= 0, the child's stdout and stderr (a detached VM's monitor reads them from a pipe).
  int output_fd = -1;
};

// img2vm-vmm running as a child of this process. Destroying it kills (SIGKILL) and reaps the
// child if it is still running. The caller's SIGCHLD must not be ignored (SIG_IGN).
class VmmProcess {
 public:
  // Starts img2vm-vmm with `spec` (vmm_spec()). Throws Error when it cannot be started (the
  // program missing or not executable included).
  static VmmProcess start(const std::string& spec, const VmmChildOptions& options = {});
  VmmProcess(VmmProcess&& other) noexcept;
  VmmProcess& operator=(VmmProcess&& other) noexcept;
  ~VmmProcess();

  // The child's process id (0 once it has been reaped).
  pid_t pid() const noexcept { return pid_; }
  // A pidfd of the child (readable once it has ended; -1 once reaped). Still owned.
  int pidfd() const noexcept { return pid_ > 0 ? pidfd_.get() : -1; }
  // Sends `sig` to the child (SIGTERM: its workload is asked to stop; SIGKILL ends the VM).
  void signal(int sig);
  // The status if the child has ended (reaping it), else nullopt; never blocks.
  std::optional<ExitStatus> try_wait();
  // Waits for the child to end, up to `timeout`; nullopt if it is still running.
  std::optional<ExitStatus> wait_for(std::chrono::milliseconds timeout);
  // Waits for the child to end.
  ExitStatus wait();
  // SIGTERM (the workload gets the image's stop signal), then SIGKILL if it has not ended
  // within `grace`; returns how it ended.
  ExitStatus stop(std::chrono::milliseconds grace);

 private:
  VmmProcess(pid_t pid, UniqueFd pidfd) : pid_(pid), pidfd_(std::move(pidfd)) {}
  void end() noexcept;  // kills and reaps a child still running
  pid_t pid_ = 0;
  UniqueFd pidfd_;
  std::optional<ExitStatus> status_;
};

// Boots `config` in this process and returns the running machine: wait(), stop(),
// request_stop() and the result's host_exit_code() are vm::Machine's (machine.hpp). The
// caller's signals stay the caller's: block or relay them as it sees fit.
std::unique_ptr<vm::Machine> start_in_process(vm::MachineConfig config);

}  // namespace img2vm::runtime
