// Before the snapshot point (docs/snapshots.md) the init reads the image's own program, so that
// its pages are in the page cache the snapshot holds: a VM resumed from the snapshot finds them
// in its memory (clean pages of the snapshot's file, shared by every VM resumed from it) instead
// of reading them from its disk when it execs the workload. Pure logic, tested on the host.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "img2vm/guestabi/config.hpp"

namespace img2vm::init {

// How much of a file's beginning interpreter_of() is given (the kernel reads 256 bytes of a
// script's "#!" line; an ELF executable's program headers and PT_INTERP come first).
inline constexpr std::size_t kExecHeadBytes = 4096;
// The most files warm_files() follows from the program through interpreters: the program, a
// script's interpreter, its dynamic loader.
inline constexpr std::size_t kMaxWarmChain = 3;
// The most files warm_files() names in all: that chain and the shared libraries it needs.
inline constexpr std::size_t kMaxWarmFiles = 48;
// The most DT_NEEDED names needed_libraries() returns for one file, and the most bytes of its
// dynamic section it reads.
inline constexpr std::size_t kMaxNeeded = 64;
inline constexpr std::size_t kMaxDynamicBytes = 64 << 10;
// Where warm_files() looks for a shared library by name after the image's LD_LIBRARY_PATH: the
// dynamic loaders' default directories (Debian's and Ubuntu's multiarch ones, Fedora's lib64,
// Alpine's and the rest's lib). A hint: a library found elsewhere is read from the disk later.
inline constexpr std::string_view kLibraryDirs[] = {"/lib/x86_64-linux-gnu",
                                                    "/usr/lib/x86_64-linux-gnu",
                                                    "/lib64",
                                                    "/usr/lib64",
                                                    "/lib",
                                                    "/usr/lib",
                                                    "/usr/local/lib"};
// The longest DT_RPATH or DT_RUNPATH dynamic_needs() takes (a longer one is left out), and the
// most directories search_path_dirs() makes of one.
inline constexpr std::size_t kMaxSearchPath = 4096;
inline constexpr std::size_t kMaxSearchDirs = 16;
// The most bytes the init reads before the snapshot point.
inline constexpr uint64_t kMaxWarmBytes = 64ull << 20;

// The program the kernel runs for an executable whose file begins with `head`: a script's "#!"
// interpreter (the line's first word), or a 64-bit little-endian ELF executable's PT_INTERP (its
// dynamic loader) when that lies within `head`. Empty for anything else (a static ELF, a
// relative interpreter, damaged headers): never reads outside `head`.
std::string interpreter_of(std::string_view head);

// Reads `length` bytes of a file at `offset` (fewer at its end, none past it).
using ReadAt = std::function<std::string(uint64_t offset, std::size_t length)>;

// The shared libraries a 64-bit little-endian ELF file needs (its dynamic section's DT_NEEDED
// names, in order, without repeats): `head` is the file's beginning (its program headers; the
// PT_LOAD segments place the string table), `read_at` reads the rest (at most kMaxDynamicBytes
// of the dynamic section, then 256 bytes per name). Only plain file names (no '/', no NUL, not
// empty), at most kMaxNeeded; nothing for anything else (a static executable, a script, damaged
// headers): never trusts an offset or size it was given.
std::vector<std::string> needed_libraries(std::string_view head, const ReadAt& read_at);

// What an ELF file's dynamic section says of the libraries it needs: needed_libraries()' names,
// and its DT_RPATH and DT_RUNPATH search paths (':'-separated, as the file has them; empty when
// absent, when their string has no end within the table, or is longer than kMaxSearchPath).
struct DynamicNeeds {
  std::vector<std::string> needed;
  std::string rpath, runpath;
};
DynamicNeeds dynamic_needs(std::string_view head, const ReadAt& read_at);

// The directories a DT_RPATH or DT_RUNPATH `list` of the object at the in-guest absolute path
// `object` names, in order, as glibc's loader takes them: $ORIGIN (or ${ORIGIN}) stands for the
// object's directory; an entry that is then not absolute, names another token ($LIB,
// $PLATFORM) or is empty is left out; each is normalized ("." and ".." resolved, no trailing
// '/'), listed once, at most kMaxSearchDirs.
std::vector<std::string> search_path_dirs(std::string_view list, const std::string& object);

// What to read before the snapshot point for the image's `config`: the executable its
// Entrypoint/Cmd names, found as the run will find it (the image's PATH and WorkingDir), then the
// interpreters it goes through (a script's, that program's dynamic loader; at most
// kMaxWarmChain), then the shared libraries they need and those need in turn (each file once,
// by its identity, whatever the links it is reached by), found where glibc's loader looks: for
// a file with DT_RUNPATH the image's LD_LIBRARY_PATH, that RUNPATH, then kLibraryDirs; for one
// without, its DT_RPATH and those of the files that needed it up to the program, then
// LD_LIBRARY_PATH, then kLibraryDirs (search_path_dirs(); glibc's cache is not read, its
// directories are mostly kLibraryDirs) and, for a dynamically
// linked program, glibc's /etc/ld.so.cache, at most kMaxWarmFiles in all, as absolute in-guest
// paths of regular files below `root` on its file system (a device node, a FIFO or a file of
// /proc is never opened). Empty when the image has no command or it is not found.
std::vector<std::string> warm_files(const std::filesystem::path& root,
                                    const guestabi::RuntimeConfig& config);

// Reads up to `budget` bytes of the file at `path` (into nothing: to fill the page cache);
// returns how many. 0 when it cannot be opened or is not a regular file (nothing else is
// opened).
uint64_t read_through(const std::string& path, uint64_t budget);

}  // namespace img2vm::init
