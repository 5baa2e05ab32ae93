// The overrides disk is read by the guest init from a block device the host filled: decoding
// arbitrary bytes must never crash or read past them, and what decodes must round-trip.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "img2vm/guestabi/error.hpp"
#include "img2vm/guestabi/overrides_disk.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // An exact-size heap copy, so that ASan catches any read past the device's bytes.
  std::string bytes(reinterpret_cast<const char*>(data), size);
  using namespace img2vm::guestabi;
  try {
    RunOverrides o = decode_overrides_disk(bytes);
    std::string disk = encode_overrides_disk(o);
    if (disk.size() % kOverridesDiskSector != 0 || !(decode_overrides_disk(disk) == o))
      __builtin_trap();
    std::size_t file_bytes = 0;  // file mounts' contents, which the init writes out
    for (const MountSpec& m : o.mounts)
      if (m.type == MountSpec::Type::kFile) file_bytes += m.content.size();
    if (file_bytes > kMaxFileMountsBytes) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}
