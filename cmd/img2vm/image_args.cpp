#include "image_args.hpp"

#include <cstdio>
#include <iostream>

#include "img2vm/runtime/image.hpp"
#include "run_options.hpp"

namespace img2vm::cli {

namespace fs = std::filesystem;

std::unique_ptr<registry::ImageSource> resolve_image(registry::Store& store, const std::string& ref,
                                                     const registry::Platform& platform,
                                                     bool quiet) {
  runtime::ImageOptions o;
  o.platform = platform;
  if (!quiet) o.hooks.note = [](std::string_view line) { std::cerr << "img2vm: " << line << "\n"; };
  return runtime::resolve_image(store, ref, o);
}

runtime::RootfsResult make_rootfs(const registry::Store& store, const registry::ImageSource& src,
                                  const RootfsArgs& a, const fs::path& output, bool progress) {
  runtime::RootfsOptions o;
  if (!a.size.empty()) o.size = parse_size("--size", a.size);
  if (!a.extra_space.empty()) o.extra_space = parse_size("--extra-space", a.extra_space);
  if (!a.max_size.empty()) o.max_size = parse_size("--max-size", a.max_size);
  o.inject_init = !a.no_init;
  if (progress) {
    o.hooks.progress = [](std::string_view phase, uint64_t done, uint64_t total) {
      std::fprintf(stderr, "\r%-6.*s %llu/%llu", static_cast<int>(phase.size()), phase.data(),
                   static_cast<unsigned long long>(done), static_cast<unsigned long long>(total));
      std::fflush(stderr);
    };
  }
  runtime::RootfsResult r = output.empty() ? runtime::convert_to_cache(store, src, o)
                                           : runtime::convert_to_path(src, output, o);
  if (progress && !r.cached) std::fprintf(stderr, "\n");
  return r;
}

}  // namespace img2vm::cli
