// Converting a resolved image into a bootable ext4 root filesystem: into the store's rootfs
// cache (converted once per image and options) or to a path of the caller's.
//
//   img2vm::runtime::RootfsOptions ro;                 // sizes, init, hooks
//   auto root = img2vm::runtime::convert_to_cache(store, *src, ro);   // root.path, root.cached
//   img2vm::runtime::convert_to_path(*src, "app.ext4", ro);
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>

#include "img2vm/registry/image_source.hpp"
#include "img2vm/registry/store.hpp"
#include "img2vm/rootfs/cache.hpp"
#include "img2vm/rootfs/convert.hpp"
#include "img2vm/runtime/hooks.hpp"

namespace img2vm::runtime {

// The options of a conversion that change the bytes of the root filesystem, and the hooks.
struct RootfsOptions {
  std::optional<uint64_t> size;         // exact file system size; default: from the content
  std::optional<uint64_t> extra_space;  // free space on top of the content; default 16 MiB
  std::optional<uint64_t> max_size;     // refuse images whose content exceeds it; default 64 GiB
  bool inject_init = true;              // put the guest init at /.img2vm/init
  std::filesystem::path init_binary;    // the init to inject; empty: find_init_binary()
  Hooks hooks;                          // "layers" and "data" progress, cancellation
};

// What a conversion produced.
struct RootfsResult {
  std::filesystem::path path;       // the ext4 file
  bool cached = false;              // found in the cache: nothing was converted
  rootfs::ConvertResult convert{};  // when converted
};

// The guest init to inject: $IMG2VM_INIT, else libexec/img2vm/ of the prefix the running program
// is installed in (so a moved install finds its own), else the configured install's, else this
// build tree's.
// Throws Error(kNotFound) naming what is missing.
std::filesystem::path find_init_binary();

// The input of rootfs::convert for `src`. Blobs without a file of their own (docker-archive
// layers) are copied into `scratch` first (checking `cancel` between chunks).
rootfs::ImageInput image_input(const registry::ImageSource& src,
                               const std::filesystem::path& scratch,
                               const std::atomic<bool>* cancel = nullptr);

// The rootfs cache of `store` (<home>/rootfs).
rootfs::RootfsCache rootfs_cache(const registry::Store& store);

// The cache key of converting `src` with `init` (empty: none) and `options`: everything that
// changes the output's bytes (manifest, platform, init digest, img2vm version, sizes). With
// `digests`, the init's digest is remembered there by the file's identity
// (sha256_file_remembered: convert_to_cache uses <home>/file-digests), so that every
// run does not hash the init again.
rootfs::CacheKey rootfs_cache_key(const registry::ImageSource& src,
                                  const std::filesystem::path& init, const RootfsOptions& options,
                                  const std::filesystem::path& digests = {});

// Converts `src` into the store's rootfs cache unless the same conversion is there already.
// Cancelled or failed, it leaves neither a file nor a cache entry behind.
RootfsResult convert_to_cache(const registry::Store& store, const registry::ImageSource& src,
                              const RootfsOptions& options = {});

// Converts `src` into `output` (replaced atomically; nothing is left there on failure).
RootfsResult convert_to_path(const registry::ImageSource& src, const std::filesystem::path& output,
                             const RootfsOptions& options = {});

}  // namespace img2vm::runtime
