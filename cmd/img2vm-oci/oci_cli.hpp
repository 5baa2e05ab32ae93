// img2vm-oci: the OCI runtime command line (runc's) over img2vm::runtime::OciRuntime. Shared
// plumbing: the global options, the log (--log, --log-format), one register_* per command.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

#include "img2vm/runtime/oci_runtime.hpp"

namespace img2vm::oci_cli {

struct Globals {
  std::string root;                 // --root: the state directory (OciRuntime::default_root())
  std::string log;                  // --log FILE: errors and warnings are appended there
  std::string log_format = "text";  // --log-format text|json
  bool systemd_cgroup = false;      // --systemd-cgroup: accepted; a VM has no cgroup of the host's
  bool debug = false;
  std::string rootless;  // --rootless true|false|auto: accepted
  // --kernel PATH: the guest kernel when config.json's annotation names none (podman
  // --runtime-flag kernel=PATH); before IMG2VM_KERNEL and the cached build.
  std::string kernel;

  runtime::OciRuntime runtime() const;
  std::filesystem::path root_dir() const;
  // A line for --log (or stderr without it) at `level` ("warning", "error").
  void log_line(const std::string& level, const std::string& msg) const;
  // A warning of create's (what a container does not get): to --log; without one, to stderr
  // when that is a terminal, else to ROOT/img2vm-oci.log (kDefaultLog; once it holds
  // kDefaultLogMax bytes it becomes img2vm-oci.log.1, replacing the one before). An engine's
  // create has the workload's stdout and stderr: conmon and the shim log what it writes there as
  // the container's own output.
  void warn(const std::string& msg) const;
  static constexpr const char* kDefaultLog = "img2vm-oci.log";
  static constexpr uintmax_t kDefaultLogMax = 1u << 20;
};

// A command's body: returns the exit code; errors are thrown as img2vm::Error.
using Action = std::function<int()>;

void register_create(CLI::App& app, Globals& g, Action* slot);
void register_start(CLI::App& app, Globals& g, Action* slot);
void register_state(CLI::App& app, Globals& g, Action* slot);
void register_kill(CLI::App& app, Globals& g, Action* slot);
void register_delete(CLI::App& app, Globals& g, Action* slot);
void register_ps(CLI::App& app, Globals& g, Action* slot);
void register_list(CLI::App& app, Globals& g, Action* slot);
void register_features(CLI::App& app, Globals& g, Action* slot);
void register_exec(CLI::App& app, Globals& g, Action* slot);

}  // namespace img2vm::oci_cli
