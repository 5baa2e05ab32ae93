// Fuzzes GzipReader (gzip members on isa-l's inflate): the first input byte picks how the rest is
// handed over (chunk sizes on the way in and out), so split headers, trailers and member
// boundaries are explored too. Errors are img2vm::Error; anything else is a bug.
#include <cstdint>

#include "chunked_input.hpp"
#include "gunzip.hpp"
#include "img2vm/base/error.hpp"

using namespace img2vm;
using namespace img2vm::layers;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  fuzz::ChunkedInput in(data, size);
  try {
    GzipReader r(in.source(), "fuzz layer");
    in.drain(r);
    if (r.bytes_in() > in.size()) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}
