// config.json as img2vm-oci reads it (runtime::parse_oci_config, issue #18), and the process
// JSON of `img2vm-oci exec --process` (runtime::parse_oci_process): an engine writes both, but
// from a user's `podman run`/`podman exec` flags and image; parsing must never crash, and what
// it accepts must hold the properties the run relies on. Each input goes to both parsers (a
// process object is also a valid start for a config's "process" member).
#include <cstddef>
#include <cstdint>
#include <string>

#include "img2vm/base/error.hpp"
#include "img2vm/runtime/oci_bundle.hpp"

namespace {

using img2vm::runtime::OciBundle;

// What a process that parsed must be: something to exec, an absolute cwd, bounded groups and
// limits that are each coherent.
void check_process(const OciBundle& b) {
  if (b.args.empty() || b.args[0].empty() || b.cwd.empty() || b.cwd[0] != '/') __builtin_trap();
  if (b.additional_gids.size() > OciBundle::kMaxStrings || b.rlimits.size() > 64) __builtin_trap();
  for (const auto& l : b.rlimits)
    if (l.type.empty() || l.soft > l.hard) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace img2vm::runtime;
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    OciBundle b = parse_oci_config(text, "/bundle");
    check_process(b);
    if (!b.root.is_absolute()) __builtin_trap();
    for (const auto& m : b.mounts)
      if (m.target.empty() || m.target[0] != '/' || m.target == "/" ||
          (m.type == Mount::Type::kBind && !m.source.is_absolute()))
        __builtin_trap();
    if (b.cpus && *b.cpus == 0) __builtin_trap();
    if (b.memory_limit && *b.memory_limit == 0) __builtin_trap();
  } catch (const img2vm::Error&) {
  }
  try {
    check_process(parse_oci_process(text));
  } catch (const img2vm::Error& e) {
    // Its errors are named for the file they come from, never config.json.
    if (std::string(e.what()).rfind("config.json", 0) == 0) __builtin_trap();
  }
  return 0;
}
