// What `convert` and `run` share: the options that change the root filesystem, and the
// resolve/convert steps of the facade (img2vm/runtime) with the CLI's notes and its progress
// line on a terminal.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "img2vm/registry/image_source.hpp"
#include "img2vm/registry/store.hpp"
#include "img2vm/runtime/rootfs.hpp"

namespace img2vm::cli {

// Options of convert (and run) that change the bytes of the root filesystem, as given.
struct RootfsArgs {
  std::string size, extra_space, max_size;
  bool no_init = false;
};

// runtime::resolve_image, saying on stderr (unless `quiet`) when it pulls.
std::unique_ptr<registry::ImageSource> resolve_image(registry::Store& store, const std::string& ref,
                                                     const registry::Platform& platform,
                                                     bool quiet);

// Converts `src` into `output`, or, with an empty `output`, into the store's rootfs cache
// unless it is there already. Shows progress on stderr when `progress`.
runtime::RootfsResult make_rootfs(const registry::Store& store, const registry::ImageSource& src,
                                  const RootfsArgs& args, const std::filesystem::path& output,
                                  bool progress);

}  // namespace img2vm::cli
