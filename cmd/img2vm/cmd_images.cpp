// `img2vm images`: the images in the store (ref, digest, platform, size, age).
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "format.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/registry/store.hpp"

namespace img2vm::cli {

namespace {
// config + layers of a stored image, or 0 when its manifest cannot be read.
uint64_t image_size(const registry::Store& s, const registry::StoredImage& img) {
  try {
    auto p = registry::parse_manifest(s.read_blob(img.manifest.digest, registry::kMaxManifestBytes),
                                      img.manifest.media_type);
    if (!p.manifest) return 0;
    uint64_t n = static_cast<uint64_t>(p.manifest->config.size);
    for (const auto& l : p.manifest->layers) n += static_cast<uint64_t>(l.size);
    return n;
  } catch (const Error&) {
    return 0;
  }
}
}  // namespace

void register_images(CLI::App& app, Globals& g, Action* slot) {
  auto* sub = app.add_subcommand("images", "List the images in the local store");
  add_global_flags(*sub);
  sub->callback([&g, slot] {
    *slot = [&g] {
      registry::Store store;
      auto imgs = store.list();
      if (!g.json)
        std::printf("%-50s %-19s %-15s %10s  %s\n", "REFERENCE", "DIGEST", "PLATFORM", "SIZE",
                    "PULLED");
      for (const auto& i : imgs) {
        uint64_t size = image_size(store, i);
        std::string plat =
            i.manifest.platform ? registry::normalize(*i.manifest.platform).str() : "";
        if (g.json) {
          nlohmann::json j = {{"ref", i.name},
                              {"digest", i.manifest.digest.str()},
                              {"platform", plat},
                              {"size", size},
                              {"pulled", i.pulled}};
          if (i.index_digest) j["index_digest"] = i.index_digest->str();
          std::cout << j.dump() << "\n";
        } else {
          std::printf("%-50s %-19s %-15s %10s  %s\n", i.name.c_str(),
                      ("sha256:" + i.manifest.digest.short_hex()).c_str(), plat.c_str(),
                      human_size(size).c_str(), age(i.pulled).c_str());
        }
      }
      return kExitOk;
    };
  });
}

}  // namespace img2vm::cli
