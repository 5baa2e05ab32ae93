// Reference parsing on arbitrary bytes: either a clean Error or a reference that round-trips.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "img2vm/base/error.hpp"
#include "img2vm/registry/reference.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view s(reinterpret_cast<const char*>(data), size);
  try {
    auto r = img2vm::registry::Reference::parse(s);
    // A normalized reference parses to itself.
    if (!(img2vm::registry::Reference::parse(r.str()) == r)) std::abort();
  } catch (const img2vm::Error&) {
  }
  return 0;
}
