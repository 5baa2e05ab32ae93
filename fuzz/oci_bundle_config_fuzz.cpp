// An OCI runtime-spec bundle's config.json (run --rootfs DIR reads DIR/../config.json, which an
// engine or `umoci unpack` wrote, or the tree's owner). Parsing it must never crash, and the image
// config it gives must reach the guest unchanged in the run overrides; img2vm.root= values must
// parse back to what was built from them.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "img2vm/guestabi/cmdline.hpp"
#include "img2vm/guestabi/config.hpp"
#include "img2vm/guestabi/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  using namespace img2vm::guestabi;
  try {
    if (auto b = oci_bundle_config(in)) {
      RunOverrides o;
      o.image = b->config;
      if (!(run_overrides_from_json(to_json(o)) == o)) __builtin_trap();
    }
  } catch (const Error&) {
  }
  try {
    RootShare r = parse_root_share(in);
    auto value = kernel_param(directory_cmdline(false, r), kRootParam);
    if (!value || !(parse_root_share(*value) == r)) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}
