// Fuzzes the tar-to-tree applier: arbitrary bytes decoded as an (uncompressed) layer tar with
// libarchive, then applied twice as two layers on one tree (so whiteouts, hardlinks and
// symlinked parents meet earlier content), the second time in the aligned layout. Errors are
// img2vm::Error; anything else is a bug, and so is a tree, even after an error, with a name that
// is not one ("", ".", "..", or with a "/") or a path longer than kMaxPathBytes. libFuzzer's
// -rss_limit_mb and -timeout catch inputs that cost memory or time out of proportion.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/layers/apply.hpp"
#include "img2vm/layers/flatten.hpp"

using namespace img2vm;
using namespace img2vm::layers;

namespace {

void check_tree(const Tree& tree) {
  struct Item {
    const Inode* dir;
    size_t path_len;
  };
  std::vector<Item> todo{{tree.root.get(), 0}};
  while (!todo.empty()) {
    Item d = todo.back();
    todo.pop_back();
    for (const auto& [name, de] : d.dir->children) {
      if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos)
        __builtin_trap();
      const size_t len = d.path_len + 1 + name.size();
      if (len > kMaxPathBytes) __builtin_trap();
      if (de.inode->type == NodeType::kDir) todo.push_back({de.inode.get(), len});
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static int spool = [] {
    int fd = ::open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    return fd;
  }();
  if (spool < 0) return 0;
  if (::ftruncate(spool, 0) != 0) return 0;
  Tree tree;
  DecodeLimits limits;
  limits.max_bytes = 16u << 20;
  for (uint32_t layer = 1; layer <= 2; ++layer) {
    size_t pos = 0;
    ReadFn rd = [&](void* buf, size_t n) {
      size_t k = std::min(n, size - pos);
      std::memcpy(buf, data + pos, k);
      pos += k;
      return k;
    };
    try {
      DecodedLayer d;
      if (layer == 1) {
        d = decode_tar(rd, Compression::kNone, spool, limits, "fuzz layer");
      } else {
        // The second time in the block-aligned layout the ext4 writer adopts: every byte sits at
        // a spool offset congruent to its file offset, and no block holds two files' bytes.
        SpoolTarget t;
        t.fd = spool;
        t.base = 1u << 20;
        t.align = 4096;
        t.limit = 64u << 20;
        d = decode_tar(rd, Compression::kNone, t, limits, "fuzz layer");
        uint64_t next_free_block = 0;
        for (const auto& e : d.entries) {
          uint64_t first = UINT64_MAX, last = 0;
          for (const auto& x : e.node.extents) {
            if (x.spool_offset % 4096 != x.offset % 4096) __builtin_trap();
            first = std::min(first, x.spool_offset / 4096);
            last = std::max(last, (x.spool_offset + x.length + 4095) / 4096);
          }
          if (first == UINT64_MAX) continue;
          if (first < next_free_block || last * 4096 > d.spool_bytes) __builtin_trap();
          next_free_block = last;
        }
      }
      apply_layer(tree, d, layer, 1, "fuzz layer");
    } catch (const Error&) {
      check_tree(tree);
      return 0;
    }
  }
  check_tree(tree);
  (void)tree_cost(tree);
  return 0;
}
