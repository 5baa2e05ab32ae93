#include "img2vm/registry/media_types.hpp"

namespace img2vm::registry::media_type {

bool is_image_manifest(std::string_view mt) noexcept {
  return mt == kOciManifest || mt == kDockerManifest;
}
bool is_index(std::string_view mt) noexcept { return mt == kOciIndex || mt == kDockerManifestList; }
bool is_schema1(std::string_view mt) noexcept {
  return mt == kDockerSchema1 || mt == kDockerSchema1Signed || mt == "application/json";
}

}  // namespace img2vm::registry::media_type
