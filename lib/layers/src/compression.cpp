#include "img2vm/layers/compression.hpp"

namespace img2vm::layers {

std::string_view to_string(Compression c) noexcept {
  switch (c) {
    case Compression::kNone:
      return "none";
    case Compression::kGzip:
      return "gzip";
    case Compression::kZstd:
      return "zstd";
  }
  return "?";
}

std::optional<Compression> compression_from_media_type(std::string_view mt) noexcept {
  // Docker's layer types, plain and "foreign" (Windows base layers, never pulled by us anyway).
  if (mt == "application/vnd.docker.image.rootfs.diff.tar.gzip" ||
      mt == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
    return Compression::kGzip;
  // OCI: application/vnd.oci.image.layer[.nondistributable].v1.tar[+gzip|+zstd]
  for (std::string_view prefix :
       {std::string_view("application/vnd.oci.image.layer.v1.tar"),
        std::string_view("application/vnd.oci.image.layer.nondistributable.v1.tar")}) {
    if (mt.substr(0, prefix.size()) != prefix) continue;
    std::string_view rest = mt.substr(prefix.size());
    if (rest.empty()) return Compression::kNone;
    if (rest == "+gzip") return Compression::kGzip;
    if (rest == "+zstd") return Compression::kZstd;
  }
  return std::nullopt;
}

Compression sniff_compression(std::string_view b) noexcept {
  if (b.size() >= 2 && static_cast<unsigned char>(b[0]) == 0x1f &&
      static_cast<unsigned char>(b[1]) == 0x8b)
    return Compression::kGzip;
  if (b.size() >= 4 && static_cast<unsigned char>(b[0]) == 0x28 &&
      static_cast<unsigned char>(b[1]) == 0xb5 && static_cast<unsigned char>(b[2]) == 0x2f &&
      static_cast<unsigned char>(b[3]) == 0xfd)
    return Compression::kZstd;
  return Compression::kNone;
}

}  // namespace img2vm::layers
