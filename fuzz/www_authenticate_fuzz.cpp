// WWW-Authenticate parsing on arbitrary bytes: a clean Error or a list of challenges.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "img2vm/base/error.hpp"
#include "www_authenticate.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    (void)img2vm::registry::parse_www_authenticate(
        std::string_view(reinterpret_cast<const char*>(data), size));
  } catch (const img2vm::Error&) {
  }
  return 0;
}
