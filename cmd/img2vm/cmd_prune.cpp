// `img2vm prune`: delete blobs that no stored image references, and stale partial downloads.
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "format.hpp"
#include "img2vm/registry/store.hpp"

namespace img2vm::cli {

void register_prune(CLI::App& app, Globals& g, Action* slot) {
  auto* sub = app.add_subcommand("prune", "Remove unreferenced blobs and partial downloads from the local store");
  add_global_flags(*sub);
  sub->callback([&g, slot] {
    *slot = [&g] {
      registry::Store store;
      auto r = store.prune();
      if (g.json) std::cout << nlohmann::json{{"blobs", r.blobs}, {"bytes", r.bytes}}.dump() << "\n";
      else std::cout << "removed " << r.blobs << " blobs, freed " << human_size(r.bytes) << "\n";
      return kExitOk;
    };
  });
}

}  // namespace img2vm::cli
