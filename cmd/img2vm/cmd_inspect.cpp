// `img2vm inspect REF`: a stored image's manifest and config as JSON.
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/registry/image_source.hpp"
#include "img2vm/registry/store.hpp"

namespace img2vm::cli {

void register_inspect(CLI::App& app, Globals& g, Action* slot) {
  auto ref = std::make_shared<std::string>();
  auto* sub =
      app.add_subcommand("inspect", "Show a stored image's manifest and configuration as JSON");
  add_global_flags(*sub);
  sub->add_option("ref", *ref, "Image reference (as pulled)")->required();
  sub->callback([&g, slot, ref] {
    *slot = [&g, ref] {
      registry::Store store;
      auto src = registry::open_image(store, *ref);
      nlohmann::json j = {{"ref", src->name()},
                          {"digest", src->manifest_digest().str()},
                          {"platform", src->platform().str()},
                          {"manifest", nlohmann::json::parse(src->manifest_bytes())},
                          {"config", nlohmann::json::parse(src->config_bytes())}};
      if (auto d = src->index_digest()) j["index_digest"] = d->str();
      std::cout << (g.json ? j.dump() : j.dump(2)) << "\n";
      return kExitOk;
    };
  });
}

}  // namespace img2vm::cli
