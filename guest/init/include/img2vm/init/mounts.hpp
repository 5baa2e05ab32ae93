// The run overrides' mounts (docker run -v, --mount, --tmpfs; guestabi::MountSpec) as mount(2)
// calls, mount points created the way docker creates missing ones, and file mounts (copies of
// host files) placed over their targets.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "img2vm/guestabi/config.hpp"
#include "img2vm/init/sys.hpp"

namespace img2vm::init {

// One mount(2) call.
struct MountCall {
  std::string source;  // the virtio-fs tag, or "tmpfs"
  std::string fstype;  // "virtiofs" or "tmpfs"
  unsigned long flags = 0;
  std::string data;  // empty: none

  friend bool operator==(const MountCall&, const MountCall&) = default;
};

// tmpfs's options: "size=<bytes>," unless `size` is 0 (the kernel's default, half of RAM), then
// "mode=<octal>", 1777 when `mode` is 0 (docker's default).
std::string tmpfs_data(uint64_t size, uint32_t mode);

// mount(2)'s arguments for `m`: MS_RDONLY when read-only; a tmpfs is also nosuid,nodev (as
// docker's) with tmpfs_data(); a virtio-fs share gets no more flags (as docker's bind mounts).
MountCall mount_call(const guestabi::MountSpec& m);

// How messages name `m`: "virtiofs 'TAG'", "tmpfs" or "file".
std::string mount_name(const guestabi::MountSpec& m);

// strerror(err) for a failed mount of `m`, with what it means where that is known: a kernel
// without virtio-fs (ENODEV), no virtio-fs device with the tag (EINVAL).
std::string mount_error_text(const guestabi::MountSpec& m, int err);

// The directories leading to the absolute `path`, outermost first: "/a/b" gives "/a", "/a/b"
// (one for each non-empty component; "/" gives none).
std::vector<std::string> path_prefixes(std::string_view path);

// What make_directories throws for a component that exists and is not a directory.
class NotADirectory : public Error {
 public:
  explicit NotADirectory(const std::string& p)
      : Error(p + " exists and is not a directory"), path(p) {}
  std::string path;
};

// Creates the absolute `dir` and its missing parents with `mode` (owned by the caller: root in
// the guest). Symlinks on the way are followed. Throws NotADirectory for a component that is not
// a directory, Error "creating P: why" when mkdir fails.
void make_directories(const std::string& dir, mode_t mode);

// The target of a file mount (guestabi::MountSpec::Type::kFile), `target` an absolute path,
// resolved inside the root directory `root_fd` as if it were "/" (openat2 RESOLVE_IN_ROOT and
// RESOLVE_NO_MAGICLINKS: ".." and absolute symlinks stay inside it; a kernel without openat2
// resolves plainly, which inside the guest's root is the same but for magic links), as crun
// resolves a destination. A missing target is created empty (0644, and missing parents 0755,
// owned by the caller), a dangling symlink there replaced by it. Returns an O_PATH descriptor of
// what is there. Throws Error for a directory there or a step that fails.
UniqueFd open_file_target(int root_fd, const std::string& target);

// Places file mounts: each one's content is written, with its mode and owner, to a file on a
// tmpfs (nosuid,nodev, mounted on `staging`, a directory created for it, at the first place()),
// which is bind-mounted over the target resolved by open_file_target (read-only with
// `readonly`). The destructor detaches the tmpfs from `staging` and removes the directory: the
// bind mounts keep it alive, and nothing else can reach it.
class FileMounts {
 public:
  explicit FileMounts(std::string staging) : staging_(std::move(staging)) {}
  FileMounts(const FileMounts&) = delete;
  FileMounts& operator=(const FileMounts&) = delete;
  ~FileMounts();

  // Throws Error "what: why" naming the step.
  void place(int root_fd, const guestabi::MountSpec& m);

 private:
  std::string staging_;
  UniqueFd dir_;  // the staging tmpfs, once mounted
  unsigned count_ = 0;
};

}  // namespace img2vm::init
