// `img2vm run`'s docker-style options turned into what the runner and the guest init take: the
// per-run overrides (docs/guest-abi.md §3), the kernel command line, durations, sizes and extra
// disks. Pure functions, unit-tested on the host (tests/cli/run_options_test.cpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "img2vm/guestabi/config.hpp"

namespace img2vm::cli {

// "512M", "2G", "1048576": bytes. `flag` names the option in errors.
uint64_t parse_size(const std::string& flag, const std::string& text);

// Looks a variable up in the host's environment (injectable for tests).
using HostEnv = std::function<std::optional<std::string>(const std::string&)>;
HostEnv process_env();

struct RunRequest {
  std::vector<std::string> cmd;                  // trailing words after the image
  std::vector<std::string> env;                  // -e, in order: KEY=VALUE, or KEY (from the host)
  std::vector<std::filesystem::path> env_files;  // --env-file, applied before -e as docker does
  std::optional<std::string> entrypoint;         // --entrypoint ("" clears the image's)
  std::string workdir, user, hostname;
  std::vector<std::string> dns;
  bool interactive = false, tty = false;
};

// docker's --env-file format: one KEY=VALUE per line, the value taken verbatim to the end of the
// line; a line with only KEY takes the host's value (and is dropped when the host has none);
// blank lines and lines starting with # are ignored. Errors name the file and line.
std::vector<std::string> parse_env_file(const std::filesystem::path& file, const HostEnv& host);

// The overrides for the init: only what the user asked to change is set.
guestabi::RunOverrides build_overrides(const RunRequest& r, const HostEnv& host);

// "10" (seconds), "500ms", "30s", "5m", "1h", "1m30s". Zero is allowed (no limit).
std::chrono::milliseconds parse_duration(const std::string& flag, const std::string& text);

// docker's -m/--memory: "512m", "1g", a plain number in MiB when under 1 MiB is meaningless
// (docker takes bytes; we accept "256" as MiB for convenience and say so in --help). At least
// 32 MiB; a whole number of MiB.
uint64_t parse_memory_mib(const std::string& text);

struct ExtraDisk {
  std::filesystem::path path;
  bool read_only = false;
};
// --disk FILE[:ro|:rw]
ExtraDisk parse_disk(const std::string& text);

// Whether the first word after run's options names an image rather than a command (for
// --rootfs, which takes no image): an oci: or docker-archive: source, or, unless it starts with
// / or ., a word with a tag or digest (':' or '@') or a registry host before its first '/'
// (a '.' or ':' in it, or localhost). A bare name (busybox) counts as a command.
bool looks_like_image(const std::string& word);

// --network: which network the guest gets (docs/cli.md "Networking").
//   user[:OPT=VAL,...]  rootless user-mode networking, the default (docker's "bridge" and
//                       "default" mean it too). Options: outbound=on|off (the guest may reach
//                       the outside world, DNS included; default on), host_loopback=on|off
//                       (10.0.2.2 reaches the host's 127.0.0.1; default off, as podman's
//                       allow_host_loopback).
//   none                loopback only
//   tap[=NAME]          a tap device (root or CAP_NET_ADMIN)
struct NetworkChoice {
  enum class Mode { kUser, kNone, kTap };
  Mode mode = Mode::kUser;
  bool outbound = true;
  bool host_loopback = false;
  std::string tap_name;  // empty: the kernel picks one

  friend bool operator==(const NetworkChoice&, const NetworkChoice&) = default;
};
NetworkChoice parse_network(const std::string& text);

}  // namespace img2vm::cli
