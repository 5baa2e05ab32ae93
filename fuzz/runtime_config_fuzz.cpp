// Image configuration blobs come from registries and archives: parsing them must never crash,
// and what the parser accepts must survive a round trip through our own config format.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "img2vm/guestabi/config.hpp"
#include "img2vm/guestabi/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  using namespace img2vm::guestabi;
  try {
    RuntimeConfig c = runtime_config_from_image_config(in);
    if (!(runtime_config_from_json(to_json(c)) == c)) __builtin_trap();
  } catch (const Error&) {
  }
  try {
    runtime_config_from_json(in);
  } catch (const Error&) {
  }
  return 0;
}
