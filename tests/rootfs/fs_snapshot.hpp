// Test helpers for the rootfs suites: file system trees (ext4_tree.hpp) read back from a host
// directory (umoci's bundle) too, e2fsck, and helpers that turn builder images into convert()
// inputs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
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
// A convert() input from raw layer blobs (media type, bytes), with a minimal image config.
rootfs::ImageInput raw_input(const std::vector<std::pair<std::string, std::string>>& layers,
                             const std::filesystem::path& dir);
// A gzip stream of `data` (libarchive's raw writer).
std::string gzip_bytes(const std::string& data);
// A one-file sparse tar (PAX): `size` bytes with data `chunks` (offset, bytes), holes elsewhere.
std::string sparse_tar(const std::string& name, uint64_t size,
                       const std::vector<std::pair<uint64_t, std::string>>& chunks);
}  // namespace img2vm::testing
