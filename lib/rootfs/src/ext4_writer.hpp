// Writes a layers::Tree as an ext4 file system through libext2fs (internal to img2vm::rootfs).
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>

#include "img2vm/base/fd.hpp"
#include "img2vm/layers/tree.hpp"

namespace img2vm::rootfs::detail {

struct Ext4Params {
  std::optional<uint64_t> size;  // exact size in bytes
  uint64_t extra_space = 0;
  uint64_t extra_inodes = 0;
  uint64_t max_size = UINT64_MAX;
  std::array<uint8_t, 16> uuid{};
  std::array<uint8_t, 16> hash_seed{};
  int64_t timestamp = 0;
  std::function<void(uint64_t, uint64_t)> progress;  // data bytes written / total
  // Bytes [adopt_begin, adopt_end) of the output (multiples of 4096) already hold the data of
  // the files whose spool is the output itself, in layers::SpoolTarget's aligned layout with
  // 4096-byte blocks: those files get these blocks as they are, without a copy. Longer runs of
  // blocks that no file keeps are cut out of the output (the data after them moves down: its
  // extents shifted where the host can collapse ranges, else copied, or always copied with
  // compact_by_copy, for tests); shorter ones are punched out (zeros). The file system then has
  // no backup superblocks (sparse_super2), so that no group's metadata has to sit inside the range.
  uint64_t adopt_begin = 0, adopt_end = 0;
  bool compact_by_copy = false;
};

// Where a spool's bytes are: DataExtent::spool_offset o is byte base + o of fd.
struct SpoolRef {
  int fd = -1;
  uint64_t base = 0;
};

struct Ext4Stats {
  uint64_t size_bytes = 0;
  uint64_t inodes = 0;
  uint64_t data_bytes = 0;
};

// `path` is the file opened as `fd`: empty, or holding only the adopted range. `spool(i)` says
// where the data of inodes whose spool is i is. The file is not synced at the end: the caller does
// that (convert: AtomicFile::commit).
Ext4Stats write_ext4(const std::filesystem::path& path, int fd, const layers::Tree& tree,
                     const std::function<SpoolRef(uint32_t)>& spool, const Ext4Params& params);

// The first byte of the output that adopted data may use when the file system may grow to
// `max_size` bytes: past the superblock and the largest group descriptor table possible.
uint64_t adopt_offset(uint64_t max_size);

}  // namespace img2vm::rootfs::detail
