// Fuzzes GzipReader (gzip members on isa-l's inflate): the first input byte picks how the rest is
// handed over (chunk sizes on the way in and out), so split headers, trailers and member
// boundaries are explored too. Errors are img2vm::Error; anything else is a bug.
#include <cstdint>
#include <cstring>
#include <vector>

#include "img2vm/base/error.hpp"
#include "img2vm/layers/gunzip.hpp"

using namespace img2vm;
using namespace img2vm::layers;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t in_chunk = 1 + (data[0] & 0x0f) * (data[0] & 0x0f) * 97;  // 1 .. 21826
  const size_t out_chunk = 1 + (data[0] >> 4) * 4099;                     // 1 .. 61486
  ++data;
  --size;
  size_t pos = 0;
  try {
    GzipReader r(
        [&](void* b, size_t n) {
          size_t k = std::min({n, in_chunk, size - pos});
          std::memcpy(b, data + pos, k);
          pos += k;
          return k;
        },
        "fuzz layer");
    std::vector<uint8_t> out(out_chunk);
    uint64_t total = 0;
    while (size_t n = r.read(out.data(), out.size())) {
      total += n;
      if (total > (64u << 20)) break;  // a bomb is the reader's caller's business (size limits)
    }
    if (r.bytes_in() > size) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}
