// `img2vm convert REF [-o FILE]`: an image from any source flattened into a bootable ext4 with
// our init at /.img2vm/init. Without -o the result goes to the store's rootfs cache.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "image_args.hpp"
#include "img2vm/base/error.hpp"

namespace img2vm::cli {

namespace fs = std::filesystem;

void register_convert(CLI::App& app, Globals& g, Action* slot) {
  struct ConvertArgs : RootfsArgs {
    std::string ref, output, platform;
  };
  auto a = std::make_shared<ConvertArgs>();
  auto* sub = app.add_subcommand(
      "convert", "Convert an image into a bootable ext4 root filesystem (rootless)");
  add_global_flags(*sub);
  sub->add_option("ref", a->ref,
                  "Image: a registry reference, oci:DIR[:TAG] or docker-archive:FILE[:REF]")
      ->required();
  sub->add_option("-o,--output", a->output,
                  "Write the ext4 image here (default: the store's rootfs cache)");
  sub->add_option("--platform", a->platform,
                  "os/arch[/variant] to select from a multi-platform image");
  sub->add_option("--size", a->size, "Exact filesystem size (e.g. 2G); default: from the content");
  sub->add_option("--extra-space", a->extra_space,
                  "Free space to leave on top of the content (default 16M)");
  sub->add_option("--max-size", a->max_size,
                  "Refuse images whose content exceeds this (default 64G)");
  sub->add_flag("--no-init", a->no_init, "Do not inject the img2vm guest init");
  sub->callback([a, &g, slot] {
    *slot = [a, &g] {
      registry::Store store;
      registry::Platform platform =
          a->platform.empty() ? registry::host_platform() : registry::Platform::parse(a->platform);
      auto src = resolve_image(store, a->ref, platform, g.json);
      runtime::RootfsResult res =
          make_rootfs(store, *src, *a, a->output, !g.json && isatty(STDERR_FILENO));
      bool cached = res.cached;
      const rootfs::ConvertResult& r = res.convert;
      const fs::path& out = res.path;
      uint64_t size = fs::file_size(out);
      if (g.json) {
        nlohmann::json j = {{"image", src->name()},
                            {"manifest_digest", src->manifest_digest().str()},
                            {"platform", src->platform().str()},
                            {"output", fs::absolute(out).string()},
                            {"size", size},
                            {"cached", cached}};
        if (!cached) {
          j["inodes"] = r.inodes;
          j["data_bytes"] = r.data_bytes;
          j["layers"] = r.layers;
        }
        std::cout << j.dump() << "\n";
      } else {
        std::cout << fs::absolute(out).string() << "\n";
      }
      return kExitOk;
    };
  });
}

}  // namespace img2vm::cli
