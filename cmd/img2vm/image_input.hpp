// Glue between the stages for the CLI: an image reference (registry, oci:, docker-archive:)
// resolved to an ImageSource (pulling into the store when needed), and that source turned into
// the input of rootfs::convert.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "img2vm/base/fd.hpp"
#include "img2vm/registry/image_source.hpp"
#include "img2vm/registry/store.hpp"
#include "img2vm/rootfs/cache.hpp"
#include "img2vm/rootfs/convert.hpp"

namespace img2vm::cli {

// Local sources are opened in place; registry references come from the store, pulled first
// when the store does not have them yet.
std::unique_ptr<registry::ImageSource> resolve_image(registry::Store& store, const std::string& ref,
                                                     const registry::Platform& platform, bool quiet);

// The convert input for `src`. Blobs without a local file (docker-archive layers) are copied
// into `scratch` first.
rootfs::ImageInput image_input(const registry::ImageSource& src, const std::filesystem::path& scratch);

// The init binary to inject: $IMG2VM_INIT, else the installed one, else the build tree's.
std::filesystem::path init_binary();

// The store's rootfs cache (<home>/rootfs).
rootfs::RootfsCache rootfs_cache(const registry::Store& store);

// Options of convert (and run) that change the bytes of the root filesystem.
struct RootfsArgs {
  std::string size, extra_space, max_size;
  bool no_init = false;
};

struct RootfsResult {
  std::filesystem::path path;
  bool cached = false;             // found in the cache (nothing converted)
  rootfs::ConvertResult convert{}; // when converted
};

// Converts `src` into `output`, or, with an empty `output`, into the store's rootfs cache keyed
// by (manifest digest, platform, init, img2vm version, options) unless it is already there.
// Shows progress on stderr when `progress`.
RootfsResult make_rootfs(const registry::Store& store, const registry::ImageSource& src, const RootfsArgs& args,
                         const std::filesystem::path& output, bool progress);

}  // namespace img2vm::cli
