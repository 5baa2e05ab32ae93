// Which decoder a layer needs, from its media type and, to be safe, from its first bytes.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string_view>

namespace img2vm::layers {

// How a layer blob is compressed.
enum class Compression { kNone, kGzip, kZstd };

// "none", "gzip" or "zstd".
std::string_view to_string(Compression c) noexcept;

// From an OCI or Docker layer media type; nullopt when the type is not a layer we can read.
std::optional<Compression> compression_from_media_type(std::string_view media_type) noexcept;

// From the magic at the start of the stream (gzip 1f 8b, zstd 28 b5 2f fd); kNone otherwise.
Compression sniff_compression(std::string_view first_bytes) noexcept;

// A byte source: reads up to n bytes into buf and returns how many, 0 at the end; throws on
// failure.
using ReadFn = std::function<size_t(void* buf, size_t n)>;

}  // namespace img2vm::layers
