// `img2vm rm REF...`: remove images from the store (their blobs stay until `prune`).
#include <iostream>

#include "cli.hpp"
#include "commands.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/registry/store.hpp"

namespace img2vm::cli {

void register_rm(CLI::App& app, Globals& /*g*/, Action* slot) {
  auto refs = std::make_shared<std::vector<std::string>>();
  auto* sub = app.add_subcommand(
      "rm", "Remove images from the local store (run prune to free their blobs)");
  add_global_flags(*sub);
  sub->add_option("ref", *refs, "Image references")->required();
  sub->callback([slot, refs] {
    *slot = [refs] {
      registry::Store store;
      for (const auto& r : *refs) {
        auto img = store.find(r);
        if (!img || !store.remove_image(img->name))
          throw Error(ErrorKind::kNotFound, "image " + r + " is not in the store");
        std::cout << "removed " << img->name << "\n";
      }
      return kExitOk;
    };
  });
}

}  // namespace img2vm::cli
