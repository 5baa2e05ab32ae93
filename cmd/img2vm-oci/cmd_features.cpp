// `img2vm-oci features`: what this runtime supports (runtime-spec features.md).
#include <iostream>

#include "oci_cli.hpp"

namespace img2vm::oci_cli {

void register_features(CLI::App& app, Globals& /*g*/, Action* slot) {
  auto* sub = app.add_subcommand("features", "Print the runtime's features (JSON)");
  sub->callback([slot] {
    *slot = [] {
      std::cout << runtime::oci_features_json() << "\n";
      return 0;
    };
  });
}

}  // namespace img2vm::oci_cli
