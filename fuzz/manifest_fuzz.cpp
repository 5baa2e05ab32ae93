// Manifest/index parsing and platform selection on arbitrary bytes, and the same bytes read as an
// image config's platform (which comes out normalized). The first byte picks the Content-Type
// hint; errors must be img2vm::Error, never a crash.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "img2vm/base/error.hpp"
#include "img2vm/registry/manifest.hpp"
#include "img2vm/registry/media_types.hpp"
#include "platform_json.hpp"

namespace mt = img2vm::registry::media_type;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const std::string_view kTypes[] = {"",
                                            "application/json",
                                            mt::kOciManifest,
                                            mt::kOciIndex,
                                            mt::kDockerManifest,
                                            mt::kDockerManifestList,
                                            mt::kDockerSchema1Signed};
  std::string_view ct = kTypes[data[0] % (sizeof kTypes / sizeof kTypes[0])];
  std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    auto p = img2vm::registry::parse_manifest(body, ct);
    if (p.index) {
      for (const char* plat : {"linux/amd64", "linux/arm64", "linux/arm/v6"}) {
        try {
          (void)img2vm::registry::select_platform(*p.index, img2vm::registry::Platform::parse(plat),
                                                  "fuzz");
        } catch (const img2vm::Error&) {
        }
      }
    }
  } catch (const img2vm::Error&) {
  }
  try {
    img2vm::registry::Platform p = img2vm::registry::platform_of_config(body, "fuzz");
    if (img2vm::registry::normalize(p) != p) std::abort();
  } catch (const img2vm::Error&) {
  }
  return 0;
}
