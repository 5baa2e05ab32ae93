// `img2vm-oci list [--format table|json] [-q]`: every container under --root.
#include <iostream>
#include <nlohmann/json.hpp>

#include "oci_cli.hpp"

namespace img2vm::oci_cli {

void register_list(CLI::App& app, Globals& g, Action* slot) {
  struct Opts {
    std::string format = "table";
    bool quiet = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("list", "List containers");
  sub->add_option("-f,--format", o->format, "table or json")
      ->check(CLI::IsMember({"table", "json"}));
  sub->add_flag("-q,--quiet", o->quiet, "Only the ids");
  sub->callback([slot, o, &g] {
    *slot = [o, &g] {
      std::vector<runtime::OciState> all = g.runtime().list();
      if (o->format == "json") {
        nlohmann::json a = nlohmann::json::array();
        for (const auto& s : all) a.push_back(nlohmann::json::parse(runtime::to_json(s)));
        std::cout << a.dump() << "\n";
        return 0;
      }
      if (!o->quiet) std::cout << "ID\tPID\tSTATUS\tBUNDLE\n";
      for (const auto& s : all) {
        if (o->quiet)
          std::cout << s.id << "\n";
        else
          std::cout << s.id << "\t" << s.pid << "\t" << s.status << "\t" << s.bundle << "\n";
      }
      return 0;
    };
  });
}

}  // namespace img2vm::oci_cli
