// A file system tree as path -> attributes, and reading one back from an ext4 image through
// libext2fs (no mount). Needs only libext2fs, so that the ext4 writer's fuzz target can use it too.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

namespace img2vm::testing {

struct FsEntry {
  char type = '?';    // f d l c b p
  uint32_t mode = 0;  // permission bits incl. setuid/setgid/sticky
  uint32_t uid = 0, gid = 0;
  uint64_t size = 0;
  std::string content;  // regular files
  std::string target;   // symlinks
  uint32_t major = 0, minor = 0;
  std::map<std::string, std::string> xattrs;
  uint64_t ino = 0;
  uint32_t nlink = 0;
  int64_t mtime = 0;
  uint32_t mtime_nsec = 0;
  uint64_t allocated = 0;  // bytes of data blocks (ext4 only: i_blocks less the xattr block and
                           // the extent tree's node blocks; 0 for a host tree)
};

// Keyed by absolute path ("/" is the root).
using FsTree = std::map<std::string, FsEntry>;

// Every entry of the image, "/" included. Throws std::runtime_error when libext2fs fails.
FsTree read_ext4(const std::filesystem::path& image);

}  // namespace img2vm::testing
