// Running a prepared VM attached to this process's terminal, as `img2vm run` does: signals
// relayed as docker run's --sig-proxy, -t's raw terminal, and the end reported (a line or the
// --json summary). Used by img2vm-vmm (the lean VMM process `img2vm run` execs, or starts as a
// child for --network tap), and by `img2vm run` itself when the VM has no JSON form.
#pragma once

#include <signal.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "img2vm/vm/machine.hpp"
#include "privileges.hpp"

namespace img2vm::cli {

enum class LogLevel { kError, kWarn, kInfo, kDebug };
LogLevel parse_log_level(const std::string& s);  // throws Error naming the value
const char* to_string(LogLevel l) noexcept;

struct AttachOptions {
  std::chrono::milliseconds stop_timeout{10000};  // after the first stop request
  bool tty = false;           // -t: stdin in raw mode, its window size passed to the guest
  bool say = false;           // stop notices on stderr (stderr a terminal, no --json)
  bool json = false;          // events and the summary as JSON lines on stderr
  bool timings = false;       // --timings: one line at the end
  bool ports_chosen = false;  // some host port was picked here: always say the published ports
  LogLevel level = LogLevel::kWarn;
  // Become this user once the VM is set up (every file open), before the guest runs, giving up
  // every privilege (privileges.hpp): img2vm-vmm started as root for --network tap.
  std::optional<RunAs> run_as;
  // When >= 0, how the run ended is written there as one JSON line ({"ExitCode": N, "Reason":
  // "..."}, write_exit_record): the exit record of a VM that `run --name` records in the store
  // (runtime::VmStore reads it once the VMM is gone). Not owned.
  int exit_fd = -1;
};

// Writes the exit record (AttachOptions::exit_fd) once; nothing when `fd` < 0.
void write_exit_record(int fd, int code, const std::string& reason);

// The signals `img2vm run` relays to the guest (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1,
// SIGUSR2, SIGWINCH).
sigset_t relayed_signals();

// Boots `config` and waits for it, relaying signals. `summary` holds what --json reports besides
// the run's outcome (image, rootfs, ...). Returns img2vm run's exit code; throws Error when the
// VM cannot be set up. `confine`: the process is the VM's alone (img2vm-vmm), so the calling
// thread and the signal relay take the main thread's seccomp filter (config.seccomp's mode)
// once the VM has started: from then on they only wait, relay, report and tear down.
int run_attached(vm::MachineConfig config, const AttachOptions& options, nlohmann::json summary,
                 bool confine = false);

// The whole hand-over from `img2vm run` to img2vm-vmm: {"machine": machine_json.hpp's form,
// "attach": AttachOptions, "summary": {...}}.
nlohmann::json attach_spec(const vm::MachineConfig& config, const AttachOptions& options,
                           const nlohmann::json& summary);
// Throws Error(kInvalidArgument) naming what is wrong.
void parse_attach_spec(const std::string& text, vm::MachineConfig& config, AttachOptions& options,
                       nlohmann::json& summary);

}  // namespace img2vm::cli
