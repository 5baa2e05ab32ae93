// Test helpers for the rootfs suites: file system trees (ext4_tree.hpp) read back from a host
// directory (umoci's bundle) too, e2fsck, and helpers that turn builder images into convert()
// inputs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ext4_tree.hpp"
#include "image_builder.hpp"
#include "img2vm/rootfs/convert.hpp"

namespace img2vm::testing {

FsTree read_host_tree(const std::filesystem::path& root);

// Paths grouped by shared inode, only groups of two or more names; each group sorted.
std::vector<std::vector<std::string>> hardlink_groups(const FsTree& t);

// e2fsck -fn on the image: returns its exit code, output in *log.
int e2fsck(const std::filesystem::path& image, std::string* log);

// Layer blobs of `img` written under dir/blobs; a convert() input reading them.
rootfs::ImageInput image_input(const BuiltImage& img, const std::filesystem::path& dir);

}  // namespace img2vm::testing

namespace img2vm::testing {
// A raw layer blob and its diff_id (default: the digest of the blob decompressed once, or of
// the blob itself where it does not decompress).
struct RawLayer {
  RawLayer(std::string mt, std::string bytes, std::optional<Digest> id = std::nullopt)
      : media_type(std::move(mt)), data(std::move(bytes)), diff_id(std::move(id)) {}
  std::string media_type;
  std::string data;
  std::optional<Digest> diff_id;
};
// A convert() input from raw layer blobs, with a minimal image config listing their diff_ids.
rootfs::ImageInput raw_input(const std::vector<RawLayer>& layers, const std::filesystem::path& dir);
// A one-file sparse tar (PAX): `size` bytes with data `chunks` (offset, bytes), holes elsewhere.
std::string sparse_tar(const std::string& name, uint64_t size,
                       const std::vector<std::pair<uint64_t, std::string>>& chunks);
}  // namespace img2vm::testing
