// Shared plumbing of the img2vm subcommands: global options, output mode, exit codes.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace img2vm::cli {

// Exit codes of the img2vm command (docs/cli.md). `run` adds the workload's own exit code and
// the runner's codes on top of these.
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;  // the operation failed; one line on stderr says why
inline constexpr int kExitUsage = 2;  // bad usage, or a command not available in this build

struct Globals {
  bool json = false;  // machine-readable output, one JSON object per line
  bool verbose = false;
};

// A subcommand's body: returns the process exit code. Errors are thrown as img2vm::Error and
// turned into one line on stderr by main().
using Action = std::function<int()>;

// Registers `name` as a command that exists in the CLI but is not implemented yet: it exits
// with kExitUsage and a one-line message naming the issue that tracks it.
// Lets the global flags follow a subcommand too (`img2vm info --json` as well as
// `img2vm --json info`): unknown options of `sub` fall through to its parent.
void add_global_flags(CLI::App& sub);

}  // namespace img2vm::cli
