// RAII owners for file descriptors, temporary directories and atomically written files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace img2vm {

// Owns one file descriptor; closes it on destruction. Move-only.
class UniqueFd {
 public:
  UniqueFd() = default;
  // Takes ownership of `fd` (-1: none).
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  // The descriptor, still owned (-1 when none).
  int get() const noexcept { return fd_; }
  // True when a descriptor is held.
  explicit operator bool() const noexcept { return fd_ >= 0; }
  // Gives up ownership and returns the descriptor.
  int release() noexcept {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  // Closes the held descriptor and takes `fd` instead.
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

// open(2) that throws an Error naming the path on failure; O_CLOEXEC is always added.
UniqueFd open_file(const std::filesystem::path& path, int flags, int mode = 0644);

// Reads a whole (small) file; throws an Error naming the path on failure, and Error(kLimit) when
// it holds more than `max_bytes`.
std::string read_file(const std::filesystem::path& path, uint64_t max_bytes = UINT64_MAX);

// Writes all of data to fd, retrying on EINTR and short writes.
void write_all(int fd, std::string_view data, std::string_view what);
// Writes all of `data` at byte `off` of `fd` (pwrite); errors say "cannot write <what>".
void pwrite_all(int fd, std::string_view data, uint64_t off, std::string_view what);
// Copies up to `len` bytes from `in` at `in_off` to `out` at `out_off`: copy_file_range where the
// kernel can, else reads and writes. Stops early at the end of `in`; returns the bytes copied.
// Errors say "cannot copy <what>".
uint64_t copy_range(int in, uint64_t in_off, int out, uint64_t out_off, uint64_t len,
                    std::string_view what);

// A directory created with mkdtemp under `parent` (default: $TMPDIR or /tmp) and removed with
// everything in it on destruction.
class TempDir {
 public:
  // Creates <parent>/<prefix>.XXXXXX; throws Error naming the parent on failure.
  explicit TempDir(std::string_view prefix = "img2vm", const std::filesystem::path& parent = {});
  TempDir(TempDir&& o) noexcept : path_(std::move(o.path_)) { o.path_.clear(); }
  TempDir& operator=(TempDir&&) = delete;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir();

  // The directory (empty once moved from).
  const std::filesystem::path& path() const noexcept { return path_; }
  // Keeps the directory: the destructor will not remove it.
  std::filesystem::path release();

 private:
  std::filesystem::path path_;
};

// A file written next to its final path under a temporary name and renamed over it only by
// commit(); if commit() is never reached (an exception, a crash) the final path is untouched
// and the temporary file is removed by the destructor.
class AtomicFile {
 public:
  // Creates the temporary file beside `final_path` with `mode`; throws Error naming it.
  explicit AtomicFile(std::filesystem::path final_path, int mode = 0644);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();

  // The temporary file's descriptor, for writing (not owned by the caller).
  int fd() const noexcept { return fd_.get(); }
  // Where the data is written until commit().
  const std::filesystem::path& temp_path() const noexcept { return temp_; }
  // Where commit() puts it.
  const std::filesystem::path& final_path() const noexcept { return final_; }
  // Appends `data` to the temporary file.
  void write(std::string_view data) { write_all(fd_.get(), data, temp_.string()); }
  // fsync, close, rename into place, fsync the directory.
  void commit();

 private:
  std::filesystem::path final_;
  std::filesystem::path temp_;
  UniqueFd fd_;
  bool committed_ = false;
};

// Replaces `path` with `data` atomically (AtomicFile + commit).
void write_file_atomic(const std::filesystem::path& path, std::string_view data, int mode = 0644);

}  // namespace img2vm
