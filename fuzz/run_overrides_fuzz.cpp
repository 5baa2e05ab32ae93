// Per-run overrides reach the guest init as a kernel command line word carrying base64url JSON
// (docs/guest-abi.md). Parsing them must never crash, and what parses must round-trip.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "img2vm/base/error.hpp"
#include "img2vm/init/guest_files.hpp"
#include "img2vm/rootfs/runtime_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  using namespace img2vm;
  try {
    rootfs::RunOverrides o = rootfs::run_overrides_from_json(in);
    if (!(rootfs::run_overrides_from_json(rootfs::to_json(o)) == o)) __builtin_trap();
    auto value = init::kernel_param(rootfs::run_overrides_kernel_param(o), rootfs::kRunParam);
    if (!value || !(init::decode_run_param(*value) == o)) __builtin_trap();
  } catch (const Error&) {
  }
  try {
    std::string bytes = rootfs::base64url_decode(in);
    if (rootfs::base64url_decode(rootfs::base64url_encode(bytes)) != bytes) __builtin_trap();
  } catch (const Error&) {
  }
  if (auto value = init::kernel_param(in, rootfs::kRunParam); value && !value->starts_with("blk:")) {
    try {
      init::decode_run_param(*value);
    } catch (const Error&) {
    }
  }
  return 0;
}
