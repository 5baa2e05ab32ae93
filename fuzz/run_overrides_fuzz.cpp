// Per-run overrides reach the guest init as a kernel command line word carrying base64url JSON
// (docs/guest-abi.md). Parsing them must never crash, what parses must round-trip, and file
// mounts' contents, the entropy, the clock and the network's addresses and routes must keep
// within their bounds.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "img2vm/guestabi/cmdline.hpp"
#include "img2vm/guestabi/config.hpp"
#include "img2vm/guestabi/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  using namespace img2vm::guestabi;
  try {
    RunOverrides o = run_overrides_from_json(in);
    if (!(run_overrides_from_json(to_json(o)) == o)) __builtin_trap();
    // What the init will write to its tmpfs is within the bounds, whatever the input claimed.
    std::size_t file_bytes = 0;
    for (const MountSpec& m : o.mounts) {
      if (m.type != MountSpec::Type::kFile) continue;
      if (m.content.size() > kMaxFileMountBytes || m.mode > 07777 || !m.tag.empty() || m.size)
        __builtin_trap();
      file_bytes += m.content.size();
    }
    if (file_bytes > kMaxFileMountsBytes || o.mounts.size() > kMaxMounts) __builtin_trap();
    // The entropy the init hands the kernel and the clock it sets are within theirs too.
    if (!o.entropy.empty() &&
        (o.entropy.size() < kMinEntropyBytes || o.entropy.size() > kMaxEntropyBytes))
      __builtin_trap();
    if (o.realtime_ns && (*o.realtime_ns < kMinRealtimeNs || *o.realtime_ns > kMaxRealtimeNs))
      __builtin_trap();
    // What the init adds to the guest's interface: within its bounds and prefix lengths.
    if (o.net) {
      if (o.net->addresses6.size() > kMaxNetAddresses6 || o.net->routes.size() > kMaxNetRoutes)
        __builtin_trap();
      for (const NetAddress6& a : o.net->addresses6)
        if (a.prefix > 128 || a.address.find(':') == std::string::npos) __builtin_trap();
      for (const NetRoute& r : o.net->routes)
        if (r.prefix > (r.destination.find(':') == std::string::npos ? 32u : 128u))
          __builtin_trap();
    }
    auto value = kernel_param(image_cmdline(false, run_overrides_kernel_param(o)), kRunParam);
    if (!value || !(decode_inline_run_param(*value) == o)) __builtin_trap();
  } catch (const Error&) {
  }
  try {
    std::string bytes = base64url_decode(in);
    if (base64url_decode(base64url_encode(bytes)) != bytes) __builtin_trap();
  } catch (const Error&) {
  }
  if (auto value = kernel_param(in, kRunParam); value && !value->starts_with(kRunParamDiskPrefix)) {
    try {
      decode_inline_run_param(*value);
    } catch (const Error&) {
    }
  }
  return 0;
}
