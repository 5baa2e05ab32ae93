// Before the snapshot point (docs/snapshots.md) the init reads the image's own program, so that
// its pages are in the page cache the snapshot holds: a VM resumed from the snapshot finds them
// in its memory (clean pages of the snapshot's file, shared by every VM resumed from it) instead
// of reading them from its disk when it execs the workload. Pure logic, tested on the host.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "img2vm/guestabi/config.hpp"

namespace img2vm::init {

// How much of a file's beginning interpreter_of() is given (the kernel reads 256 bytes of a
// script's "#!" line; an ELF executable's program headers and PT_INTERP come first).
inline constexpr std::size_t kExecHeadBytes = 4096;
// The most files warm_files() names: the program, a script's interpreter, its dynamic loader.
inline constexpr std::size_t kMaxWarmFiles = 3;
// The most bytes the init reads before the snapshot point.
inline constexpr uint64_t kMaxWarmBytes = 64ull << 20;

// The program the kernel runs for an executable whose file begins with `head`: a script's "#!"
// interpreter (the line's first word), or a 64-bit little-endian ELF executable's PT_INTERP (its
// dynamic loader) when that lies within `head`. Empty for anything else (a static ELF, a
// relative interpreter, damaged headers): never reads outside `head`.
std::string interpreter_of(std::string_view head);

// What to read before the snapshot point for the image's `config`: the executable its
// Entrypoint/Cmd names, found as the run will find it (the image's PATH and WorkingDir), then the
// interpreters it goes through (a script's, that program's dynamic loader), at most
// kMaxWarmFiles, as absolute in-guest paths of regular files below `root` on its file system
// (a device node, a FIFO or a file of /proc is never opened). Empty when the image has no
// command or it is not found.
std::vector<std::string> warm_files(const std::filesystem::path& root,
                                    const guestabi::RuntimeConfig& config);

// Reads up to `budget` bytes of the file at `path` (into nothing: to fill the page cache);
// returns how many. 0 when it cannot be opened or is not a regular file (nothing else is
// opened).
uint64_t read_through(const std::string& path, uint64_t budget);

}  // namespace img2vm::init
