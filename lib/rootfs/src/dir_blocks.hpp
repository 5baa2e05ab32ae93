// Directory blocks for the ext4 writer (internal to img2vm::rootfs): a directory whose entries fit
// in one block is linear; a larger one is a hashed tree (htree, the dir_index feature) as the
// kernel would make it: a dx_root in block 0, dx_node blocks when one root cannot point at every
// leaf, then leaf blocks holding the entries in hash order.
//
// Planning (how many blocks) and building (their bytes) share one layout, so the size estimate
// made before the file system exists is exactly what the writer later needs.
#pragma once

#include <ext2fs/ext2_fs.h>

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

namespace img2vm::rootfs::detail {

struct DirEntry {
  std::string_view name;
  uint32_t ino = 0;
  uint8_t file_type = 0;  // EXT2_FT_*
};

// What the superblock says about directory blocks.
struct DirFormat {
  unsigned block_size = 4096;
  bool metadata_csum = true;  // checksum tails in leaf (dirent tail) and index (dx tail) blocks
  bool dir_index = true;      // large directories become htrees; linear blocks otherwise
  uint8_t hash_version = EXT2_HASH_HALF_MD4;  // s_def_hash_version, stored in each dx_root
  bool unsigned_hash = false;                 // EXT2_FLAGS_UNSIGNED_HASH in s_flags
  std::array<uint32_t, 4> hash_seed{};        // s_hash_seed as held in memory by libext2fs

  static DirFormat of(const struct ext2_super_block& sb);
  bool operator==(const DirFormat&) const = default;
};

struct DirPlan {
  bool indexed = false;          // an htree: the inode gets EXT2_INDEX_FL
  unsigned indirect_levels = 0;  // 0: the root points at leaves; 1: at dx_nodes
  uint64_t index_blocks = 0;     // the dx_root and the dx_nodes
  uint64_t leaf_blocks = 0;      // blocks holding entries (all blocks of a linear directory)
  uint64_t blocks() const { return index_blocks + leaf_blocks; }
};

struct DirBlocks {
  DirPlan plan;
  std::vector<char> data;  // plan.blocks() blocks; checksums are left to ext2fs_write_dir_block4
};

// Entries exclude "." and ".."; names must be unique. Both throw img2vm::Error (kUnsupported)
// for a name longer than 255 bytes or a directory too large for a two-level htree.
DirPlan plan_dir(std::vector<DirEntry> entries, const DirFormat& f);
DirBlocks build_dir(std::vector<DirEntry> entries, uint32_t self, uint32_t parent,
                    const DirFormat& f);

// The name hash the kernel uses for this directory format (bit 0 clear), minor hash in *minor.
uint32_t dir_name_hash(std::string_view name, const DirFormat& f, uint32_t* minor = nullptr);

}  // namespace img2vm::rootfs::detail
