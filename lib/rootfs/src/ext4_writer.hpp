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
  std::optional<uint64_t> size;   // exact size in bytes
  uint64_t extra_space = 0;
  uint64_t extra_inodes = 0;
  uint64_t max_size = UINT64_MAX;
  std::array<uint8_t, 16> uuid{};
  std::array<uint8_t, 16> hash_seed{};
  int64_t timestamp = 0;
  std::function<void(uint64_t, uint64_t)> progress;  // data bytes written / total
};

struct Ext4Stats {
  uint64_t size_bytes = 0;
  uint64_t inodes = 0;
  uint64_t data_bytes = 0;
};

// `path` is an existing empty file opened as `fd`. `spool_fd(i)` gives the fd holding the data
// of inodes whose spool is i.
Ext4Stats write_ext4(const std::filesystem::path& path, int fd, const layers::Tree& tree,
                     const std::function<int(uint32_t)>& spool_fd, const Ext4Params& params);

}  // namespace img2vm::rootfs::detail
