// config.json as img2vm-oci reads it (runtime::parse_oci_config, issue #18): an engine writes
// it, but from a user's `podman run` flags and image; parsing must never crash, and what it
// accepts must hold the properties the run relies on.
#include <cstddef>
#include <cstdint>
#include <string>

#include "img2vm/base/error.hpp"
#include "img2vm/runtime/oci_bundle.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace img2vm::runtime;
  try {
    OciBundle b =
        parse_oci_config(std::string(reinterpret_cast<const char*>(data), size), "/bundle");
    if (b.args.empty() || b.args[0].empty() || b.cwd.empty() || b.cwd[0] != '/') __builtin_trap();
    if (!b.root.is_absolute()) __builtin_trap();
    for (const auto& m : b.mounts)
      if (m.target.empty() || m.target[0] != '/' || m.target == "/" ||
          (m.type == Mount::Type::kBind && !m.source.is_absolute()))
        __builtin_trap();
    if (b.cpus && *b.cpus == 0) __builtin_trap();
    if (b.memory_limit && *b.memory_limit == 0) __builtin_trap();
  } catch (const img2vm::Error&) {
  }
  return 0;
}
