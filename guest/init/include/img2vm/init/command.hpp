// What the guest init runs, decided the way `docker run` decides it: the image's runtime config
// merged with the runner's per-run overrides, Entrypoint + Cmd, the environment, and the PATH
// lookup with docker's (runc's) error messages and exit statuses. Pure logic, tested on the host.
#pragma once

#include <filesystem>
#include <iosfwd>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "img2vm/guestabi/config.hpp"

namespace img2vm::init {

// docker's default PATH for Linux containers, used when the image's Env has none.
inline constexpr std::string_view kDefaultPath =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// docker run's rules: --entrypoint replaces the image Entrypoint and clears the image Cmd;
// trailing arguments replace Cmd; each -e KEY=VALUE replaces KEY in place or is appended, in
// order; -w, -u and -h replace WorkingDir, User and the hostname.
guestabi::RuntimeConfig apply_overrides(guestabi::RuntimeConfig config,
                                        const guestabi::RunOverrides& overrides);

// Entrypoint followed by Cmd. Throws Error "no command specified" when both
// are empty, as docker does.
std::vector<std::string> command_line(const guestabi::RuntimeConfig& config);

// Replaces the entry with the same key as `entry` ("KEY=VALUE"), or appends it.
void env_set(std::vector<std::string>& env, std::string_view entry);
std::optional<std::string> env_get(const std::vector<std::string>& env, std::string_view key);

// The workload's environment as docker builds it: PATH (default), HOSTNAME, TERM=xterm with a
// tty, then the config's Env replacing or appending, then HOME from the user if still unset.
std::vector<std::string> workload_env(const std::vector<std::string>& config_env,
                                      std::string_view hostname, bool tty, std::string_view home);

// Why the workload could not be started: docker's message and `docker run`'s exit status
// (127 not found, 126 found but not executable).
struct ExecFailure {
  int status = 127;
  std::string message;
  friend bool operator==(const ExecFailure&, const ExecFailure&) = default;
};
std::ostream& operator<<(std::ostream& os, const ExecFailure& f);

// Finds `name` as runc does (Go's exec.LookPath): a name containing '/' is used as is (relative
// to `cwd`), anything else is searched in the colon-separated `path_env` (an empty element is
// the current directory). Files are looked up below `root` (the guest's "/"); the returned path
// is the in-guest path to pass to execve.
std::variant<std::string, ExecFailure> find_executable(const std::filesystem::path& root,
                                                       std::string_view name,
                                                       std::string_view path_env,
                                                       std::string_view cwd);

// The failure for execve(path) failing with errno `err`.
ExecFailure exec_failure(std::string_view path, int err);

// A signal given as "SIGTERM", "TERM" or "15"; nullopt if unknown.
std::optional<int> parse_signal(std::string_view name);

}  // namespace img2vm::init
