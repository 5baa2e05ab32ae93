// `img2vm-oci state ID`: the runtime-spec state as JSON.
#include <iostream>

#include "oci_cli.hpp"

namespace img2vm::oci_cli {

void register_state(CLI::App& app, Globals& g, Action* slot) {
  auto id = std::make_shared<std::string>();
  auto* sub = app.add_subcommand("state", "Print a container's state (runtime-spec JSON)");
  sub->add_option("id", *id, "The container id")->required();
  sub->callback([slot, id, &g] {
    *slot = [id, &g] {
      std::cout << runtime::to_json(g.runtime().state(*id)) << "\n";
      return 0;
    };
  });
}

}  // namespace img2vm::oci_cli
