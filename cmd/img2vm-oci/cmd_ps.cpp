// `img2vm-oci ps [--format table|json] ID`: the container's host processes (its monitor and
// VMM; the workload's own processes live in the guest).
#include <iostream>
#include <nlohmann/json.hpp>

#include "oci_cli.hpp"

namespace img2vm::oci_cli {

void register_ps(CLI::App& app, Globals& g, Action* slot) {
  struct Opts {
    std::string id, format = "table";
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("ps", "List a container's host processes");
  sub->add_option("-f,--format", o->format, "table or json")
      ->check(CLI::IsMember({"table", "json"}));
  sub->add_option("id", o->id, "The container id")->required();
  sub->callback([slot, o, &g] {
    *slot = [o, &g] {
      std::vector<pid_t> pids = g.runtime().pids(o->id);
      if (o->format == "json") {
        std::cout << nlohmann::json(pids).dump() << "\n";
      } else {
        std::cout << "PID\n";
        for (pid_t p : pids) std::cout << p << "\n";
      }
      return 0;
    };
  });
}

}  // namespace img2vm::oci_cli
