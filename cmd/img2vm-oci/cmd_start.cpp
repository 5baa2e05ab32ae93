// `img2vm-oci start ID`: the created container's workload execs.
#include "oci_cli.hpp"

namespace img2vm::oci_cli {

void register_start(CLI::App& app, Globals& g, Action* slot) {
  auto id = std::make_shared<std::string>();
  auto* sub = app.add_subcommand("start", "Run a created container's process");
  sub->add_option("id", *id, "The container id")->required();
  sub->callback([slot, id, &g] {
    *slot = [id, &g] {
      g.runtime().start(*id);
      return 0;
    };
  });
}

}  // namespace img2vm::oci_cli
