// Fuzzes the zstd layer path: ZstdReader (libzstd streaming) on its own, with the first input
// byte picking how the rest is handed over (chunk sizes on the way in and out), then the same
// bytes as a "+zstd" layer through decode_tar (decompressed, hashed for the diff_id, read as a
// tar, content compressed again named). Errors are img2vm::Error; anything else is a bug.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>

#include "chunked_input.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/layers/apply.hpp"
#include "unzstd.hpp"

using namespace img2vm;
using namespace img2vm::layers;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static int spool = ::open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (spool < 0 || size == 0) return 0;
  fuzz::ChunkedInput in(data, size);
  try {
    ZstdReader r(in.source(), "fuzz layer");
    uint64_t total = in.drain(r);
    if (r.bytes_in() > in.size() || r.bytes_out() != total) __builtin_trap();
  } catch (const Error&) {
  }
  if (::ftruncate(spool, 0) != 0) return 0;
  DecodeLimits limits;
  limits.max_bytes = 16u << 20;
  try {
    DecodedLayer d = decode_tar(in.source(), Compression::kZstd, spool, limits, "fuzz layer");
    if (d.diff_id.algorithm() != "sha256") __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}
