// Fuzzes the tar-to-tree applier: arbitrary bytes decoded as an (uncompressed) layer tar with
// libarchive, then applied twice as two layers on one tree (so whiteouts, hardlinks and
// symlinked parents meet earlier content). Errors are img2vm::Error; anything else is a bug.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/layers/apply.hpp"
#include "img2vm/layers/flatten.hpp"

using namespace img2vm;
using namespace img2vm::layers;

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
      DecodedLayer d = decode_tar(rd, Compression::kNone, spool, limits, "fuzz layer");
      apply_layer(tree, d, layer, 1, "fuzz layer");
    } catch (const Error&) {
      return 0;
    }
  }
  (void)tree_cost(tree);
  return 0;
}
