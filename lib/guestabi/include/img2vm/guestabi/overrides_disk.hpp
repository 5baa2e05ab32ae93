// The overrides disk: the run overrides on a raw, read-only block device, for overrides too large
// for the kernel command line (docs/guest-abi.md §3). Layout, little-endian:
//
//   0   8 bytes  magic "IMG2VMRO"
//   8   u32      format version (kOverridesDiskVersion)
//   12  u32      N, the length of the JSON text (at most kMaxOverridesJson)
//   16  N bytes  to_json(RunOverrides)
//       zeros up to a multiple of 512 bytes (the device size)
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "img2vm/guestabi/config.hpp"

namespace img2vm::guestabi {

inline constexpr std::string_view kOverridesDiskMagic = "IMG2VMRO";
inline constexpr uint32_t kOverridesDiskVersion = 1;
inline constexpr std::size_t kOverridesDiskHeader = 16;
inline constexpr std::size_t kOverridesDiskSector = 512;
inline constexpr std::size_t kMaxOverridesJson = 16u << 20;
// The most of a device a reader needs to look at (header, the largest JSON, padding).
inline constexpr std::size_t kMaxOverridesDisk =
    (kOverridesDiskHeader + kMaxOverridesJson + kOverridesDiskSector - 1) / kOverridesDiskSector *
    kOverridesDiskSector;

// The device's bytes for `o`, a multiple of kOverridesDiskSector. Throws Error when the JSON is
// larger than kMaxOverridesJson.
std::string encode_overrides_disk(const RunOverrides& o);

// How many bytes from the device's start hold the header and the JSON, as the header in `start`
// (its first bytes) says, at most kOverridesDiskHeader + kMaxOverridesJson: a reader reads that
// much, not the whole device. kOverridesDiskHeader when `start` is shorter than the header.
std::size_t overrides_disk_extent(std::string_view start);

// The overrides from the first bytes of such a device (at least the header and the JSON; more is
// ignored). Throws Error, naming what is wrong, on a short header, another magic or version, a
// length over kMaxOverridesJson or past the end of `bytes`, and JSON that fails its checks.
RunOverrides decode_overrides_disk(std::string_view bytes);

}  // namespace img2vm::guestabi
