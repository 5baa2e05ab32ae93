// An OCI runtime-spec bundle (a directory holding config.json and usually the root file
// system), as podman's conmon or containerd's shim hand it to `img2vm-oci create` (issue #18),
// read into what a VM run is made of. Everything in config.json is untrusted input: it is
// read with bounds (size, counts, lengths) and every field has its type checked; what a VM
// cannot honour is listed in `unhonoured` (for the log), never silently dropped.
//
//   img2vm::runtime::OciBundle b = img2vm::runtime::load_oci_bundle("/run/bundle");
//   for (const auto& why : b.unhonoured) log(why);
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "img2vm/runtime/mounts.hpp"

namespace img2vm::runtime {

struct OciRlimit {
  std::string type;  // RLIMIT_NOFILE, ...
  uint64_t soft = 0, hard = 0;
  friend bool operator==(const OciRlimit&, const OciRlimit&) = default;
};

struct OciBundle {
  static constexpr uint64_t kMaxConfigBytes = 4u << 20;
  static constexpr size_t kMaxStrings = 65536;  // args, env, gids, mounts' options, annotations

  std::filesystem::path dir;  // the bundle, absolute
  std::string oci_version;    // 1.x.y
  // root.path, resolved against the bundle when relative; root.readonly.
  std::filesystem::path root;
  bool root_readonly = false;
  // process
  std::vector<std::string> args;  // at least one
  std::vector<std::string> env;   // KEY=VALUE, in order
  std::string cwd = "/";          // absolute
  uint32_t uid = 0, gid = 0;
  std::vector<uint32_t> additional_gids;
  bool terminal = false;
  bool no_new_privileges = false;
  std::vector<OciRlimit> rlimits;
  std::string hostname;
  // Bind mounts (sources resolved against the bundle) and tmpfs, in config order.
  std::vector<Mount> mounts;
  // proc, sysfs, devpts, mqueue, cgroup: the guest init mounts its own; their destinations.
  std::vector<std::string> kernel_mounts;
  std::map<std::string, std::string> annotations;
  std::optional<uint64_t> memory_limit;  // linux.resources.memory.limit, bytes (> 0)
  std::optional<unsigned>
      cpus;  // from linux.resources.cpu: ceil(quota / period), or cpuset's count
  // linux.namespaces' network entry: its path (the engine's namespace, joined), or none listed
  // at all (the host's network, which a VM cannot share); listed without a path: a new one.
  std::filesystem::path network_namespace;
  bool host_network = true;
  // One line for each setting a VM cannot honour, naming it (logged by img2vm-oci).
  std::vector<std::string> unhonoured;
};

// Reads `dir`/config.json. Throws Error(kNotFound) when it is missing, Error(kInvalidArgument)
// naming the field at fault ("config.json: process.args: ..."), Error(kLimit) past a bound,
// Error(kUnsupported) for an ociVersion other than 1.x.
OciBundle load_oci_bundle(const std::filesystem::path& dir);

// A runtime-spec process object alone (`img2vm-oci exec --process FILE`), read with the same
// checks and bounds as config.json's process into the process fields of an OciBundle; errors
// name "the process JSON".
OciBundle parse_oci_process(const std::string& text);

// The same from config.json's text, the bundle being `dir` (for tests and fuzzing).
OciBundle parse_oci_config(const std::string& text, const std::filesystem::path& dir);

}  // namespace img2vm::runtime
