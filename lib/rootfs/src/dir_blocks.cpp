#include "dir_blocks.hpp"

extern "C" {
#include <et/com_err.h>
}
#include <ext2fs/ext2fs.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <tuple>

#include "img2vm/base/error.hpp"

namespace img2vm::rootfs::detail {

namespace {

// On-disk sizes (Documentation/filesystems/ext4/directory.rst).
constexpr unsigned kDirentHeader = 8;      // inode, rec_len, name_len, file_type
constexpr unsigned kDotRec = 12;           // "." and ".." records
constexpr unsigned kRootInfoOffset = 24;   // dx_root_info after the two fake entries
constexpr unsigned kRootIndexOffset = 32;  // count/limit and dx_entries after dx_root_info
constexpr unsigned kNodeIndexOffset = 8;   // after a dx_node's empty dirent
constexpr unsigned kDxEntry = sizeof(struct ext2_dx_entry);
constexpr unsigned kMaxName = 255;

unsigned rec_len(size_t name_len) {
  return static_cast<unsigned>((kDirentHeader + name_len + 3) & ~size_t{3});
}

struct Hashed {
  DirEntry e;
  uint32_t hash = 0, minor = 0;
};

struct Geometry {
  unsigned usable;      // bytes for entries in a leaf (the block less its dirent tail)
  unsigned leaf_fill;   // an htree leaf takes entries while they fit in this many bytes
  unsigned root_limit;  // dx_entries in the dx_root (room left for the dx tail)
  unsigned node_limit;  // dx_entries in a dx_node
};

Geometry geometry(const DirFormat& f) {
  if (f.block_size < 1024 || f.block_size > 32768 || (f.block_size & (f.block_size - 1)))
    throw Error(ErrorKind::kUnsupported,
                "directory blocks of " + std::to_string(f.block_size) + " bytes");
  Geometry g;
  g.usable = f.block_size - (f.metadata_csum ? sizeof(struct ext2_dir_entry_tail) : 0);
  // Leaves are filled to about 80%, so that names added later in the VM mostly land in a leaf
  // with room instead of splitting it (a split leaves both halves half empty anyway).
  g.leaf_fill = g.usable - g.usable / 5;
  const unsigned dx_tail = f.metadata_csum ? sizeof(struct ext2_dx_tail) : 0;
  g.root_limit = (f.block_size - kRootIndexOffset - dx_tail) / kDxEntry;
  g.node_limit = (f.block_size - kNodeIndexOffset - dx_tail) / kDxEntry;
  return g;
}

// Greedy packing of records in order: where each block starts. A record goes into the current
// block when the block's bytes stay within `fill`; every block takes at least one record.
template <class Rec>
std::vector<size_t> pack(size_t n, unsigned fill, Rec rec) {
  std::vector<size_t> starts;
  unsigned used = 0;
  for (size_t i = 0; i < n; ++i) {
    unsigned r = rec(i);
    if (starts.empty() || used + r > fill) {
      starts.push_back(i);
      used = 0;
    }
    used += r;
  }
  return starts;
}

struct Layout {
  DirPlan plan;
  std::vector<Hashed> ents;   // linear: ".", ".." and the entries; htree: entries by hash
  std::vector<size_t> start;  // first entry of each leaf (or linear block) in `ents`
  uint64_t nodes = 0;         // dx_node blocks
};

Layout layout(std::vector<DirEntry> entries, const DirFormat& f, uint32_t self, uint32_t parent) {
  const Geometry g = geometry(f);
  for (const DirEntry& e : entries)
    if (e.name.size() > kMaxName)
      throw Error(ErrorKind::kUnsupported,
                  "name longer than 255 bytes: \"" + std::string(e.name) + "\"");
  Layout l;
  l.ents.reserve(entries.size() + 2);
  l.ents.push_back({{".", self, EXT2_FT_DIR}});
  l.ents.push_back({{"..", parent, EXT2_FT_DIR}});
  for (const DirEntry& e : entries) l.ents.push_back({e});
  l.start =
      pack(l.ents.size(), g.usable, [&](size_t i) { return rec_len(l.ents[i].e.name.size()); });
  l.plan.leaf_blocks = l.start.size();
  if (l.start.size() == 1 || !f.dir_index) return l;

  // An htree: "." and ".." live in the dx_root; the entries go to leaves in hash order (minor
  // hash, then name, break ties so the order and so the bytes never depend on the input order).
  l.ents.erase(l.ents.begin(), l.ents.begin() + 2);
  for (Hashed& h : l.ents) h.hash = dir_name_hash(h.e.name, f, &h.minor);
  std::sort(l.ents.begin(), l.ents.end(), [](const Hashed& a, const Hashed& b) {
    return std::tie(a.hash, a.minor, a.e.name) < std::tie(b.hash, b.minor, b.e.name);
  });
  l.start =
      pack(l.ents.size(), g.leaf_fill, [&](size_t i) { return rec_len(l.ents[i].e.name.size()); });
  const uint64_t leaves = l.start.size();
  l.plan.indexed = true;
  l.plan.leaf_blocks = leaves;
  if (leaves > g.root_limit) {
    l.nodes = (leaves + g.node_limit - 1) / g.node_limit;
    l.plan.indirect_levels = 1;
    // A third level needs the largedir feature (Linux 4.13+, and the 2 GiB directory size limit
    // lifted with it). Two levels point at root_limit * node_limit leaves (258,570 with 4 KiB
    // blocks and checksums: over 3 million entries even with 255-byte names), so img2vm stays
    // compatible with every ext4 kernel and refuses anything larger.
    if (l.nodes > g.root_limit)
      throw Error(ErrorKind::kUnsupported,
                  "a directory of " + std::to_string(entries.size()) + " entries needs " +
                      std::to_string(leaves) +
                      " leaf blocks, more than a two-level htree indexes (" +
                      std::to_string(uint64_t{g.root_limit} * g.node_limit) +
                      "); largedir is not supported");
  }
  l.plan.index_blocks = 1 + l.nodes;
  return l;
}

void put_dirent(char* at, const DirEntry& e, unsigned rec) {
  auto* d = reinterpret_cast<struct ext2_dir_entry*>(at);
  d->inode = e.ino;
  d->rec_len = static_cast<__u16>(rec);  // host order: ext2fs_write_dir_block4 swaps dirents
  ext2fs_dirent_set_name_len(d, static_cast<int>(e.name.size()));
  ext2fs_dirent_set_file_type(d, e.file_type);
  std::memcpy(d->name, e.name.data(), e.name.size());
}

// Entries [first, last) packed into `blk`, the last one stretched to the tail.
void put_leaf(char* blk, const Hashed* first, const Hashed* last, const Geometry& g, bool csum) {
  unsigned pos = 0;
  for (const Hashed* h = first; h != last; ++h) {
    unsigned rec = rec_len(h->e.name.size());
    put_dirent(blk + pos, h->e, h + 1 == last ? g.usable - pos : rec);
    pos += rec;
  }
  if (csum) {
    auto* t = reinterpret_cast<struct ext2_dir_entry_tail*>(blk + g.usable);
    t->det_rec_len = sizeof(struct ext2_dir_entry_tail);
    t->det_reserved_name_len = EXT2_DIR_NAME_LEN_CSUM;
  }
}

// A count/limit header and dx_entries at `at` (little endian, as libext2fs and the kernel read
// them); the first entry's hash field is the count/limit header, its hash implicitly 0.
void put_index(char* at, unsigned limit,
               const std::vector<std::pair<uint32_t, uint32_t>>& hash_block) {
  auto* cl = reinterpret_cast<struct ext2_dx_countlimit*>(at);
  cl->limit = ext2fs_cpu_to_le16(static_cast<__u16>(limit));
  cl->count = ext2fs_cpu_to_le16(static_cast<__u16>(hash_block.size()));
  auto* ent = reinterpret_cast<struct ext2_dx_entry*>(at);
  for (size_t i = 0; i < hash_block.size(); ++i) {
    if (i) ent[i].hash = ext2fs_cpu_to_le32(hash_block[i].first);
    ent[i].block = ext2fs_cpu_to_le32(hash_block[i].second);
  }
}

}  // namespace

DirFormat DirFormat::of(const struct ext2_super_block& sb) {
  DirFormat f;
  f.block_size = EXT2_BLOCK_SIZE(&sb);
  f.metadata_csum = (sb.s_feature_ro_compat & EXT4_FEATURE_RO_COMPAT_METADATA_CSUM) != 0;
  f.dir_index = (sb.s_feature_compat & EXT2_FEATURE_COMPAT_DIR_INDEX) != 0;
  f.hash_version = sb.s_def_hash_version;
  f.unsigned_hash = (sb.s_flags & EXT2_FLAGS_UNSIGNED_HASH) != 0;
  std::memcpy(f.hash_seed.data(), sb.s_hash_seed, sizeof sb.s_hash_seed);
  return f;
}

uint32_t dir_name_hash(std::string_view name, const DirFormat& f, uint32_t* minor) {
  // Like the kernel and e2fsck: the legacy, half-MD4 and TEA hashes have "unsigned char"
  // variants, 3 above, used when the superblock says so.
  int alg = f.hash_version;
  if (f.unsigned_hash && alg <= EXT2_HASH_TEA) alg += EXT2_HASH_LEGACY_UNSIGNED;
  ext2_dirhash_t hash = 0, minor_hash = 0;
  errcode_t err = ext2fs_dirhash2(alg, name.data(), static_cast<int>(name.size()), nullptr, 0,
                                  f.hash_seed.data(), &hash, &minor_hash);
  if (err)
    throw Error(ErrorKind::kUnsupported,
                "directory hash " + std::to_string(f.hash_version) + ": " + error_message(err));
  if (minor) *minor = minor_hash;
  return hash;
}

DirPlan plan_dir(std::vector<DirEntry> entries, const DirFormat& f) {
  return layout(std::move(entries), f, 0, 0).plan;
}

DirBlocks build_dir(std::vector<DirEntry> entries, uint32_t self, uint32_t parent,
                    const DirFormat& f) {
  const Geometry g = geometry(f);
  Layout l = layout(std::move(entries), f, self, parent);
  DirBlocks out;
  out.plan = l.plan;
  const size_t bs = f.block_size;
  out.data.assign(l.plan.blocks() * bs, 0);
  const uint64_t first_leaf = l.plan.index_blocks;
  for (size_t j = 0; j < l.start.size(); ++j) {
    const size_t end = j + 1 < l.start.size() ? l.start[j + 1] : l.ents.size();
    put_leaf(out.data.data() + (first_leaf + j) * bs, l.ents.data() + l.start[j],
             l.ents.data() + end, g, f.metadata_csum);
  }
  if (!l.plan.indexed) return out;

  // Each leaf's lower bound: its first hash, with bit 0 set when that hash continues from the
  // previous leaf (equal hashes straddling the boundary), which tells a lookup to read on.
  auto bound = [&](size_t j) {
    const Hashed& first = l.ents[l.start[j]];
    bool cont = j > 0 && l.ents[l.start[j] - 1].hash == first.hash;
    return first.hash | (cont ? 1u : 0u);
  };
  std::vector<std::pair<uint32_t, uint32_t>> root;
  if (l.plan.indirect_levels == 0) {
    for (size_t j = 0; j < l.start.size(); ++j)
      root.emplace_back(bound(j), static_cast<uint32_t>(first_leaf + j));
  } else {
    // Leaves spread evenly over the dx_nodes (blocks 1..nodes), so every node has room to grow.
    const uint64_t leaves = l.start.size();
    for (uint64_t k = 0; k < l.nodes; ++k) {
      const uint64_t a = leaves * k / l.nodes, b = leaves * (k + 1) / l.nodes;
      std::vector<std::pair<uint32_t, uint32_t>> node;
      for (uint64_t j = a; j < b; ++j)
        node.emplace_back(bound(j), static_cast<uint32_t>(first_leaf + j));
      char* blk = out.data.data() + (1 + k) * bs;
      auto* d = reinterpret_cast<struct ext2_dir_entry*>(blk);  // an empty entry over the block
      d->inode = 0;
      d->rec_len = static_cast<__u16>(bs);
      put_index(blk + kNodeIndexOffset, g.node_limit, node);
      root.emplace_back(node.front().first, static_cast<uint32_t>(1 + k));
    }
  }
  char* blk = out.data.data();
  put_dirent(blk, {".", self, EXT2_FT_DIR}, kDotRec);
  put_dirent(blk + kDotRec, {"..", parent, EXT2_FT_DIR}, static_cast<unsigned>(bs) - kDotRec);
  auto* info = reinterpret_cast<struct ext2_dx_root_info*>(blk + kRootInfoOffset);
  info->reserved_zero = 0;
  info->hash_version = f.hash_version;
  info->info_length = sizeof(struct ext2_dx_root_info);
  info->indirect_levels = static_cast<__u8>(l.plan.indirect_levels);
  info->unused_flags = 0;
  put_index(blk + kRootIndexOffset, g.root_limit, root);
  return out;
}

}  // namespace img2vm::rootfs::detail
