// VMs that outlive the command that started them (`img2vm run -d`, ps, logs, stop, kill, wait,
// rm), kept as docker keeps containers: one directory per VM under <home>/vms (home:
// registry::Store::default_home()):
//
//   <home>/vms/.lock             flock: create takes it exclusively (names stay unique)
//   <home>/vms/<id>/             id: 64 lowercase hex; the directory's flock guards state changes
//     state.json                 VmRecord, replaced atomically (temp + rename)
//     spec.json                  what img2vm-vmm runs ({"machine", "attach", "summary"})
//     console.log[.1]            the VM's console and the VMM's messages, one RFC 3339 time per
//                                line; at 10 MiB console.log becomes console.log.1 (two kept)
//     vsock.sock[_PORT]          the VM's vsock device (vm::VsockConfig::uds_path)
//     exit.json                  an attached run's end, written by its VMM ({"ExitCode", "Reason"})
//
// A detached VM runs as two processes in a session of their own: the monitor
// (`img2vm-vmm --monitor DIR`, run_monitor()), which starts img2vm-vmm, copies its output to
// console.log and records how it ended, and the VMM itself. Both are recorded with their start
// time (/proc/PID/stat), so a reused pid is never taken for them.
//
//   img2vm::runtime::VmStore vms;
//   img2vm::runtime::VmRecord r = vms.get("web");   // full id, name or unique id prefix
//   vms.stop(r.id, std::chrono::seconds(10));
//   vms.remove(r.id, false);
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "img2vm/base/fd.hpp"
#include "img2vm/runtime/virtiofsd.hpp"

namespace img2vm::runtime {

// docker's rule for container names: [a-zA-Z0-9][a-zA-Z0-9_.-]*, here at most 128 bytes.
bool is_vm_name(const std::string& name);
// Throws Error(kInvalidArgument) with docker's words when `name` is not a VM name.
void check_vm_name(const std::string& name);

enum class VmStatus { kCreated, kRunning, kExited };
const char* to_string(VmStatus s) noexcept;  // "created", "running", "exited"

// A process as recorded: its pid and its start time (field 22 of /proc/PID/stat, clock ticks
// since boot), so that a pid reused by another process does not count.
struct ProcessRef {
  pid_t pid = 0;
  uint64_t start_time = 0;
  // The process's reference now, or an empty one (pid 0) when there is no such process.
  static ProcessRef of(pid_t pid);
  // The recorded process still runs (same pid and start time, not a zombie).
  bool alive() const;
  // A pidfd of the recorded process (readable once it ends), or none when it is gone.
  UniqueFd pidfd() const;
};

// What state.json holds.
struct VmRecord {
  std::string id;    // 64 lowercase hex
  std::string name;  // unique among the store's VMs
  std::string image;
  std::vector<std::string> command;
  std::string created;   // RFC 3339 with nanoseconds, UTC
  std::string started;   // when the workload started ("" until then)
  std::string finished;  // when it ended ("" until then)
  VmStatus status = VmStatus::kCreated;
  bool detached = false;
  bool auto_remove = false;                       // run --rm: removed when it ends
  std::chrono::milliseconds stop_timeout{10000};  // stop's default grace (run --stop-timeout)
  std::string vmm_program;                        // what the monitor starts (img2vm-vmm)
  ProcessRef monitor, vmm;
  std::optional<int> exit_code;  // docker's: the workload's, 128+N when the VMM died of signal N
  std::string exit_reason;       // how it ended, for humans ("exited", "killed by signal 9 ...")
  std::string error;             // why it could not start ("" when it did)
  // The VM's vsock device (<dir>/vsock.sock; vm::VsockConfig::uds_path), for exec's agent.
  std::string vsock_socket;
  // A VM made by img2vm-oci (oci_runtime.hpp): its bundle directory and config.json's
  // annotations, for the runtime-spec state; empty otherwise.
  std::string bundle;
  std::map<std::string, std::string> annotations;
  // img2vm-oci's pod sandbox (oci_runtime.hpp): no VM; `monitor` is a host process that holds
  // the pod's namespaces until it is signalled.
  bool pod_sandbox = false;
};

// What a new VM is recorded with.
struct VmCreate {
  std::string name;  // empty: a generated one
  std::string image;
  std::vector<std::string> command;
  bool detached = true;
  bool auto_remove = false;
  std::chrono::milliseconds stop_timeout{10000};
  std::string vmm_program;  // empty: find_vmm_binary() when it starts
  std::string bundle;       // img2vm-oci: VmRecord::bundle, annotations and pod_sandbox
  std::map<std::string, std::string> annotations;
  bool pod_sandbox = false;
};

class VmStore {
 public:
  // <registry::Store::default_home()>/vms.
  static std::filesystem::path default_dir();
  // Opens (creating if needed) the VM directory `dir`.
  explicit VmStore(std::filesystem::path dir = default_dir());
  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path vm_dir(const std::string& id) const { return dir_ / id; }

  // The file an attached run's VMM writes its end to (AttachOptions::exit_fd in the CLI).
  std::filesystem::path exit_file(const std::string& id) const { return vm_dir(id) / "exit.json"; }

  // Records a new VM (status created) with `spec` as its spec.json. Error(kInvalidArgument)
  // `Conflict. The container name "/N" is already in use by container "ID"...` when the name is
  // taken; Error(kLimit) when the store holds the most VMs it lists (kMaxVms).
  VmRecord create(const VmCreate& c, const std::string& spec);
  // Throws create()'s Conflict error when a VM is named `name` (a check before a long pull;
  // create() checks again under the store's lock).
  void check_name_free(const std::string& name) const;

  // By full id, name or unique id prefix (docker's order); nothing when none matches.
  // Error(kInvalidArgument) when a prefix matches several VMs.
  std::optional<VmRecord> find(const std::string& ref) const;
  // By name only (img2vm-oci's container ids are names: a prefix never matches).
  std::optional<VmRecord> find_name(const std::string& name) const;
  // As find(), but Error(kNotFound) "No such VM: REF" when none matches.
  VmRecord get(const std::string& ref) const;
  // Every VM, the newest first (at most kMaxVms). An attached run with auto_remove that has
  // ended is removed here.
  std::vector<VmRecord> list() const;

  // Changes the record of `id` under its lock: `change` gets the current record (as stored) and
  // edits it. Returns the new record; nothing when the VM is gone.
  std::optional<VmRecord> update(const std::string& id,
                                 const std::function<void(VmRecord&)>& change) const;

  // SIGTERM to the VMM (the image's StopSignal to the workload), then SIGKILL once `timeout`
  // has passed; returns when the VM has ended and its end is recorded. Nothing for a VM that is
  // not running.
  void stop(const std::string& id, std::chrono::milliseconds timeout) const;
  // Sends `sig` to the VMM (it relays SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and
  // SIGWINCH to the workload; SIGKILL ends the VM). Error(kInvalidArgument) for other signals or
  // a VM that is not running.
  void kill(const std::string& id, int sig) const;
  // Blocks until the VM has ended; returns its exit code.
  int wait(const std::string& id) const;
  // Removes the VM: its directory, log, sockets. A running VM is refused
  // (Error(kInvalidArgument), docker's words) unless `force`, which kills it first.
  void remove(const std::string& id, bool force) const;

  static constexpr size_t kMaxVms = 4096;
  static constexpr uint64_t kMaxStateBytes = 256 * 1024;
  static constexpr uint64_t kMaxSpecBytes = 16u << 20;

 private:
  friend class VmLock;
  std::optional<VmRecord> read(const std::string& id) const;
  // The record as the processes show it: a running VM whose monitor is gone is exited.
  VmRecord observe(VmRecord r) const;
  UniqueFd lock_store() const;
  // Waits until the VM's monitor has ended (up to `timeout`; forever when empty).
  bool wait_ended(const VmRecord& r, std::optional<std::chrono::milliseconds> timeout) const;

  std::filesystem::path dir_;
};

// The name of a signal for kill -s: "TERM", "SIGTERM" or a number; throws Error naming it.
int parse_signal(const std::string& s);

// The current time as RFC 3339 with nanoseconds, UTC (docker's logs -t form).
std::string now_rfc3339_nano();

// Writes a VM's output to DIR/console.log, each line prefixed with the time its first byte came
// (RFC 3339 with nanoseconds) and a space, or a tab for a line of the workload's stderr. When the
// file reaches `max_bytes`, it becomes console.log.1 (replacing the one before) and a new
// console.log is started: at most two files, 2 x max_bytes. A line longer than max_bytes is cut
// into lines. Write errors stop the logging silently (a VM whose directory was removed). Two
// streams (the console and the workload's stderr) share the file in the order their bytes come; a
// line one of them has not finished is ended in the log when the other writes.
class ConsoleLog {
 public:
  enum class Stream { kConsole, kStderr };
  static constexpr uint64_t kDefaultMaxBytes = 10u << 20;
  explicit ConsoleLog(std::filesystem::path dir, uint64_t max_bytes = kDefaultMaxBytes);
  // Appends `data` (any bytes, split anywhere) of `stream`.
  void write(std::string_view data, Stream stream = Stream::kConsole);

 private:
  void open();
  void rotate();
  std::filesystem::path dir_;
  uint64_t max_;
  uint64_t size_ = 0;
  bool line_start_ = true;
  Stream open_line_ = Stream::kConsole;  // whose line is unfinished when !line_start_
  UniqueFd fd_;
};

struct LogOptions {
  bool timestamps = false;     // -t: keep each line's time
  std::optional<size_t> tail;  // --tail N: only the last N lines
};
// Where `logs` sends what it reads: text of one stream (whole lines, or the last one's start),
// in the order it was written.
using LogSink = std::function<void(std::string_view text, ConsoleLog::Stream stream)>;
// The lines of DIR/console.log.1 and DIR/console.log, as `logs` shows them, each with its stream.
void read_console_log(const std::filesystem::path& dir, const LogOptions& o, const LogSink& out);
// The same, both streams as one text.
std::string read_console_log(const std::filesystem::path& dir, const LogOptions& o);
// logs -f: what read_console_log() gives, then each line as it is written, to `out`, until the
// VM has ended (its monitor is gone) and everything written is out.
void follow_console_log(const VmStore& store, const std::string& id, const LogOptions& o,
                        const LogSink& out);

// How a detached VM is started.
struct DetachedOptions {
  // The program run as `PROGRAM --monitor DIR --ready-fd N`: img2vm-vmm (default:
  // find_vmm_binary()).
  std::filesystem::path monitor;
  // How long the workload may take to start (a slow nested boot included).
  std::chrono::milliseconds ready_timeout{std::chrono::minutes(10)};
  // Descriptors the spec refers to (/proc/self/fd/N disks), kept open in the monitor and passed
  // to the VMM, and the volume locks the monitor holds as long as it runs.
  std::vector<int> pass_fds;
  // Shared directories (-v, --mount, --rootfs DIR): the monitor starts their virtiofsd before
  // the VMM (and adds their devices to the machine), so that they live as long as the VM, and
  // stops them after it. Recorded in spec.json as "shares".
  std::vector<DeferredShare> shares;
  // img2vm-oci: the monitor keeps the caller's stdin, stdout and stderr (conmon's or the
  // shim's pipes) and copies the VM's console to its stdout as well as to console.log; its
  // exit status is the workload's either way. Recorded in spec.json as "forward_output".
  bool inherit_stdio = false;
  // img2vm-oci's process.terminal: a terminal (a pty's slave, raw) that is the monitor's stdin,
  // stdout and stderr instead. The monitor copies the console to it, the VMM reads the
  // console's input from it, and the monitor passes its window size on (it checks it every
  // 100 ms, and sends the VMM SIGWINCH when it changed). -1: none. Recorded in spec.json as
  // "terminal".
  int terminal_fd = -1;
  // A container engine's network namespace the VM has taken over (vm::NetnsTap::restore_state):
  // the monitor closes its copy of the tap once the VMM has it, and restores the namespace
  // (vm::restore_netns, run by img2vm-netns: restore_netns_in_child) when the VM has ended,
  // before it exits itself. Recorded in spec.json as "netns_restore".
  std::string netns_restore;
};

// `run -d`: records the VM (VmStore::create), starts its monitor as a daemon (double fork: its
// own session, no terminal, stdin and stdout /dev/null unless inherit_stdio) and returns once
// the guest init has started the workload (BOOT_MARK 2, vm::MachineConfig::ready_fd), or, for
// a workload that waits for its start (RunOverrides::wait_for_start), once it waits (BOOT_MARK
// 3: VmRecord::started stays empty until the agent's start lets it go). When the VM ends before,
// Error(kInvalidArgument) with its reason (the record stays, exited, for logs and ps -a).
// The monitor adds the vsock device (<dir>/vsock.sock) to the spec's machine. A share that
// cannot be served (virtiofsd failed) ends the VM before it starts, with virtiofsd's reason.
VmRecord start_detached(VmStore& store, const VmCreate& c, const std::string& spec,
                        const DetachedOptions& o = {});

struct PreparedMachine;
// What a detached start of `p` needs besides the spec: its memfds, volume locks and tap
// descriptor (NetworkMode::kNetns) in pass_fds, its deferred shares (build it with
// MachineOptions::defer_shares). Throws Error(kUnsupported) for shares already started here or
// img2vm's own tap network (NetworkMode::kTap), which would end with this process.
DetachedOptions detached_options(const PreparedMachine& p, DetachedOptions base = {});
// `p` started detached, the spec being its config: start_detached(store, c, {"machine": ...},
// detached_options(p, o)).
VmRecord start_detached(VmStore& store, const VmCreate& c, const PreparedMachine& p,
                        const DetachedOptions& o = {});

// The monitor (`img2vm-vmm --monitor DIR --ready-fd N`): starts the VMM of the VM in `vm_dir`
// with its output on a pipe copied to console.log, records its pid, writes one byte to
// `ready_fd` (when >= 0) once the workload has started or waits for its start, and closes it;
// copies the console to its stdout too when spec.json says "forward_output" (and with
// "terminal", takes the console's input and window size from its stdin); waits for the VMM and
// records how it ended. Returns the VM's exit code (VmRecord::exit_code: the workload's, 128+N
// when the VMM died of signal N), or 125 when the VM could not be started (recorded too).
int run_monitor(const std::filesystem::path& vm_dir, int ready_fd);

}  // namespace img2vm::runtime
