// The little the init needs around system calls: its error type, a file descriptor owner, a
// bounded file read and a file replaced by rename. The init links only libc and img2vm::guestabi
// (docs/guest-abi.md), so these are its own rather than img2vm::base's.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

namespace img2vm::init {

// What the init's steps throw: one line saying what failed and why.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws Error "what: strerror(err)".
[[noreturn]] void throw_errno(const std::string& what, int err);
[[noreturn]] void throw_errno(const std::string& what);  // with the current errno

// Owns one file descriptor; closes it on destruction. Move-only.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();

  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept;

 private:
  int fd_ = -1;
};

// Up to `max_bytes` of the file at `path` (what is beyond is not read). Throws Error naming the
// path.
std::string read_file(const std::string& path, std::size_t max_bytes);

// As read_file, but a block device is read with O_DIRECT (sector-aligned buffer and lengths):
// straight from the device, never from the page cache. A VM restored from a snapshot keeps the
// cache of the VM that was saved, whose pages of this device (the kernel's partition scan reads
// its first sectors when it probes it) hold another file's bytes than the device now has. Any
// other file (a regular file, in the unit tests) is read as read_file reads it.
std::string read_device(const std::string& path, std::size_t max_bytes);
// Reads up to `max_bytes` (rounded up to whole 512-byte sectors) from `fd`, opened with
// O_DIRECT, through an aligned buffer, up to its end; the result is cut to `max_bytes`.
std::string read_direct(int fd, const std::string& path, std::size_t max_bytes);

// Replaces `path` with `content`: written under a temporary name beside it, then renamed over
// it, so a reader never sees half a file. Throws Error naming the path; leaves nothing behind.
// Not synced (an fsync is a journal commit the workload would wait for, several disk round
// trips): the files the init writes are written again at every boot when empty or its own, and
// the init syncs before the VM ends.
void replace_file(const std::string& path, std::string_view content, mode_t mode);

// Writes `content` into the regular file `path` in place (from its start, then cut to the
// content's size; mode set) when it is one with a single link, else as replace_file. Used for
// the files only the init writes, before the workload runs: no reader can see them half done,
// and no inode is made or freed (in a VM resumed from a snapshot, which made them, that work
// would cost it faults into the file system's allocation paths). Throws Error naming the path.
void rewrite_file(const std::string& path, std::string_view content, mode_t mode);

}  // namespace img2vm::init
