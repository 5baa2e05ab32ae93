// The flattened image as a metadata tree: only names, attributes and the location of each
// regular file's bytes in a spool file are held in memory; the bytes themselves stay on disk.
// Built by applying layers in order (apply.hpp); read by the ext4 writer (img2vm::rootfs).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace img2vm::layers {

// The kind of file system object a node is.
enum class NodeType : uint8_t { kFile, kDir, kSymlink, kCharDev, kBlockDev, kFifo };

// "file", "directory", "symlink", ... for messages.
std::string_view to_string(NodeType t) noexcept;

// A run of a regular file's data: `length` bytes at file offset `offset`, stored in the spool
// file at `spool_offset`. Bytes of a file not covered by any extent are a hole (zeros).
struct DataExtent {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t spool_offset = 0;
};

struct Inode;

// One name in a directory. Several dentries may share an Inode (hard links).
struct Dentry {
  std::shared_ptr<Inode> inode;
  uint32_t layer = 0;  // the layer whose entry created or last replaced this name
};

// A file system object of the tree: type, metadata and where its data is.
struct Inode {
  NodeType type = NodeType::kFile;
  uint32_t mode = 0644;  // permission bits incl. setuid/setgid/sticky (07777)
  uint32_t uid = 0, gid = 0;
  int64_t mtime = 0;  // seconds since the epoch
  uint32_t mtime_nsec = 0;
  uint64_t size = 0;                      // regular files: apparent size in bytes (holes included)
  uint32_t dev_major = 0, dev_minor = 0;  // character and block devices
  std::string link_target;                // symlinks: the link text, never interpreted on the host
  std::vector<std::pair<std::string, std::string>> xattrs;  // sorted by name
  uint32_t spool = 0;               // regular files: which layer's spool holds the data
  std::vector<DataExtent> extents;  // regular files: where the data is, ascending offsets
  std::map<std::string, Dentry, std::less<>> children;  // directories

  Inode() = default;
  Inode(const Inode&) = default;
  Inode(Inode&&) noexcept = default;
  Inode& operator=(const Inode&) = default;
  Inode& operator=(Inode&&) noexcept = default;
  // Releases the subtree without recursion (a hostile image may nest directories deeply): the
  // children that only this inode holds are taken apart one by one from a heap stack.
  ~Inode();

  // Bytes of data actually stored (holes excluded).
  uint64_t data_bytes() const noexcept {
    uint64_t n = 0;
    for (const auto& e : extents) n += e.length;
    return n;
  }
};

// The root of a flattened image. The root inode is a directory (0755 root:root, mtime 0 unless a
// layer sets "./").
struct Tree {
  std::shared_ptr<Inode> root;
  Tree();
};

}  // namespace img2vm::layers
