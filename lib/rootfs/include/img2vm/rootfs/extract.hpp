// A directory of an ext4 image (a converted rootfs) copied out into a host directory, as docker
// fills a new volume with the image's content at its mount point.
//
//   img2vm::rootfs::ExtractResult r =
//       img2vm::rootfs::extract_tree("rootfs.ext4", "/var/lib/data", "/volumes/v/_data");
//
// The image is untrusted: nothing on the host side is followed (every entry is created relative
// to its parent's descriptor with O_NOFOLLOW, O_EXCL and friends), names are checked, and depth,
// entry count and bytes are bounded. Files, directories and symlinks are copied with their
// permission bits (setuid, setgid, sticky included) and mtimes; owners and device nodes, fifos
// and sockets only when running as root (otherwise the entries belong to the caller and special
// files are skipped). Hard links become separate files; xattrs are not copied.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace img2vm::rootfs {

struct ExtractLimits {
  uint32_t max_depth = 128;          // directory levels below the copied directory
  uint64_t max_entries = 1000000;    // files, directories, symlinks and special files
  uint64_t max_bytes = 64ull << 30;  // regular file content
  // Owners and special files: 1 yes, 0 no (special files skipped), -1 when running as root.
  int privileged = -1;
};

struct ExtractResult {
  bool copied = false;   // false: the path is not a directory in the image, or dest was not empty
  uint64_t entries = 0;  // entries created (the copied directory itself not counted)
  uint64_t bytes = 0;    // regular file content written
  uint64_t skipped = 0;  // special files left out (not root)
};

// Copies the directory at `path` in the ext4 image `image` (symlinks on the way to it resolved
// inside the image) into `dest`: the tree is built in a temporary directory beside `dest` and
// renamed over it, so `dest` (absent, or an empty directory) ends up with the whole copy, the
// directory's own mode, owner (root only) and mtime included, or unchanged. When `dest` is a
// non-empty directory by then, the copy is dropped (copied = false). Throws Error(kLimit) past a
// bound, Error(kIntegrity) for an entry no ext4 writer produces, Error(kIo) otherwise; nothing
// is left behind.
ExtractResult extract_tree(const std::filesystem::path& image, const std::string& path,
                           const std::filesystem::path& dest, const ExtractLimits& limits = {});

}  // namespace img2vm::rootfs
