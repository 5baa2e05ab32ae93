// `img2vm prune`: delete blobs that no stored image references, stale partial downloads, and
// cached root filesystems whose image is no longer in the store.
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>

#include "cli.hpp"
#include "commands.hpp"
#include "format.hpp"
#include "img2vm/registry/store.hpp"
#include "img2vm/runtime/rootfs.hpp"

namespace img2vm::cli {

void register_prune(CLI::App& app, Globals& g, Action* slot) {
  auto* sub = app.add_subcommand(
      "prune",
      "Remove unreferenced blobs, partial downloads and cached root filesystems of removed images");
  add_global_flags(*sub);
  sub->callback([&g, slot] {
    *slot = [&g] {
      registry::Store store;
      // Root filesystems first: what they may keep is decided by the images still stored.
      std::set<std::string> manifests;
      for (const auto& img : store.list()) manifests.insert(img.manifest.digest.str());
      auto fsr = runtime::rootfs_cache(store).prune([&](const rootfs::RootfsCache::Entry& e) {
        return manifests.count(e.manifest_digest) > 0;
      });
      auto r = store.prune();
      if (g.json)
        std::cout << nlohmann::json{{"blobs", r.blobs},
                                    {"bytes", r.bytes},
                                    {"rootfs_files", fsr.files},
                                    {"rootfs_bytes", fsr.bytes}}
                         .dump()
                  << "\n";
      else
        std::cout << "removed " << r.blobs << " blobs, freed " << human_size(r.bytes)
                  << "; removed " << fsr.files << " cached root filesystem files, freed "
                  << human_size(fsr.bytes) << "\n";
      return kExitOk;
    };
  });
}

}  // namespace img2vm::cli
