#include "cli.hpp"

#include <iostream>

namespace img2vm::cli {

void add_global_flags(CLI::App& sub) { sub.fallthrough(); }

CLI::App* add_unavailable(CLI::App& app, const std::string& name, const std::string& description,
                          const std::string& tracked_in, Action* slot) {
  CLI::App* sub = app.add_subcommand(name, description + " (not available yet)");
  // Accept any arguments so that the message below, not a parse error, is what the user sees.
  sub->allow_extras();
  sub->callback([name, tracked_in, slot] {
    *slot = [name, tracked_in] {
      std::cerr << "img2vm: '" << name << "' is not available in this build yet (" << tracked_in << ")\n";
      return kExitUsage;
    };
  });
  return sub;
}

}  // namespace img2vm::cli
