#include "img2vm/guestabi/overrides_disk.hpp"

#include <algorithm>

#include "img2vm/guestabi/error.hpp"

namespace img2vm::guestabi {

namespace {

constexpr std::string_view kWhat = "overrides disk";

void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
}

uint32_t get_u32(std::string_view bytes, std::size_t off) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i)
    v = (v << 8) | static_cast<unsigned char>(bytes[off + static_cast<std::size_t>(i)]);
  return v;
}

[[noreturn]] void bad(const std::string& why) { throw Error(std::string(kWhat) + ": " + why); }

}  // namespace

std::string encode_overrides_disk(const RunOverrides& o) {
  std::string json = to_json(o);
  if (json.size() > kMaxOverridesJson)
    bad("the run overrides take " + std::to_string(json.size()) +
        " bytes of JSON, more than the limit of " + std::to_string(kMaxOverridesJson));
  std::string out(kOverridesDiskMagic);
  put_u32(out, kOverridesDiskVersion);
  put_u32(out, static_cast<uint32_t>(json.size()));
  out += json;
  out.resize((out.size() + kOverridesDiskSector - 1) / kOverridesDiskSector * kOverridesDiskSector,
             '\0');
  return out;
}

std::size_t overrides_disk_extent(std::string_view start) {
  if (start.size() < kOverridesDiskHeader) return kOverridesDiskHeader;
  return kOverridesDiskHeader + std::min<std::size_t>(get_u32(start, 12), kMaxOverridesJson);
}

RunOverrides decode_overrides_disk(std::string_view bytes) {
  if (bytes.size() < kOverridesDiskHeader)
    bad("truncated: " + std::to_string(bytes.size()) + " bytes, shorter than its " +
        std::to_string(kOverridesDiskHeader) + "-byte header");
  if (bytes.substr(0, kOverridesDiskMagic.size()) != kOverridesDiskMagic)
    bad("no \"" + std::string(kOverridesDiskMagic) +
        "\" magic at its start (not an overrides disk)");
  const uint32_t version = get_u32(bytes, 8);
  if (version != kOverridesDiskVersion)
    bad("format version " + std::to_string(version) + ", this build reads version " +
        std::to_string(kOverridesDiskVersion));
  const uint32_t length = get_u32(bytes, 12);
  if (length > kMaxOverridesJson)
    bad("its header claims " + std::to_string(length) + " bytes of JSON, more than the limit of " +
        std::to_string(kMaxOverridesJson));
  if (length > bytes.size() - kOverridesDiskHeader)
    bad("truncated: its header claims " + std::to_string(length) + " bytes of JSON, " +
        std::to_string(bytes.size() - kOverridesDiskHeader) + " follow it");
  try {
    return run_overrides_from_json(bytes.substr(kOverridesDiskHeader, length));
  } catch (const Error& e) {
    bad(e.what());
  }
}

}  // namespace img2vm::guestabi
