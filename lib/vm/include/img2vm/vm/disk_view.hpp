// What a virtio-blk device reads and writes: a disk image seen read-write, read-only, or as a
// private copy-on-write view that leaves the image untouched (so one cached rootfs serves many
// VMs at once). A copy-on-write view is a reflink clone of the image when the filesystem can
// share extents (btrfs, XFS), otherwise a sparse overlay file holding the sectors the guest
// wrote, with the image opened read-only underneath. Either way the view's storage is an
// unlinked temporary file: it disappears with the VM, also when the process is killed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

namespace img2vm::vm {

// How a disk holds the guest's writes: in the file, refused, or in a private copy.
enum class DiskMode { kReadWrite, kReadOnly, kCopyOnWrite };
// "read-write", "read-only" or "copy-on-write".
std::string_view to_string(DiskMode m);

// The bytes a virtio-blk disk shows the guest, over a host file.
class DiskView {
 public:
  virtual ~DiskView() = default;
  // Size in bytes, fixed for the view's life.
  virtual uint64_t size() const = 0;
  // Whole transfers or false (errno set). Callers keep [off, off+len) inside size().
  virtual bool read(uint8_t* buf, uint64_t len, uint64_t off) = 0;
  virtual bool write(const uint8_t* buf, uint64_t len, uint64_t off) = 0;
  // Makes written data durable (fdatasync where it applies); false on failure.
  virtual bool flush() = 0;
  // True when writes are refused.
  virtual bool read_only() const = 0;
  // "read-write", "read-only", "reflink" or "overlay": how this view stores the guest's data.
  virtual std::string_view kind() const = 0;
  // Copy-on-write views (snapshots): writes every sector the guest has written so far to
  // `dst`, atomically and sparse (format in disk_view.cpp), for open_disk_view_with_writes().
  // Other views throw Error (kUnsupported). Not concurrently with write().
  virtual void save_writes(const std::filesystem::path& dst);
};

// Opens `path` (a regular file or block device) in `mode`. `scratch_dir` is where an overlay's
// temporary file goes; empty means next to `path`, falling back to $TMPDIR or /tmp.
std::unique_ptr<DiskView> open_disk_view(const std::filesystem::path& path, DiskMode mode,
                                         const std::filesystem::path& scratch_dir = {});

// A copy-on-write view of `path`, as open_disk_view(path, kCopyOnWrite, scratch_dir) makes,
// that starts with the writes save_writes() put in `saved_writes` (a snapshot's disk-N). Both
// files are only read: the view is private. Throws Error: kInvalidArgument when the writes
// were saved from a disk of another size, kIntegrity when the file is damaged.
std::unique_ptr<DiskView> open_disk_view_with_writes(const std::filesystem::path& path,
                                                     const std::filesystem::path& saved_writes,
                                                     const std::filesystem::path& scratch_dir = {});

// A view over an already open descriptor of `size` bytes (tests, fuzzing).
std::unique_ptr<DiskView> fd_disk_view(int fd_owned, uint64_t size, bool read_only);

// A copy-on-write overlay over `base_fd_owned` whose sectors live in `overlay_fd_owned` (an
// empty file it sizes itself). Exposed for tests; open_disk_view() builds the same thing.
std::unique_ptr<DiskView> overlay_disk_view(int base_fd_owned, int overlay_fd_owned, uint64_t size);

// Copies `src` to `dst` atomically (temp + rename; `dst` is replaced): a reflink clone where the
// filesystem shares extents, else a sparse copy that keeps the holes (copy_file_range between
// SEEK_DATA/SEEK_HOLE). The copy's mode is 0644 and owned by the caller.
void clone_file(const std::filesystem::path& src, const std::filesystem::path& dst);

}  // namespace img2vm::vm
