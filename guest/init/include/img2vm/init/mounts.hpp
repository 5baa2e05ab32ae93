// The run overrides' mounts (docker run -v, --mount, --tmpfs; guestabi::MountSpec) as mount(2)
// calls, and mount points created the way docker creates missing ones.
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

// How messages name `m`: "virtiofs 'TAG'" or "tmpfs".
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

}  // namespace img2vm::init
