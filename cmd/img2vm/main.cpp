// img2vm: OCI/Docker images to microVMs. Parses the command line, runs one subcommand, and turns
// every failure into one line on stderr and a non-zero exit code.
#include <CLI/CLI.hpp>
#include <exception>
#include <iostream>
#include <string_view>

#include "cli.hpp"
#include "commands.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/version.hpp"

using namespace img2vm;
using namespace img2vm::cli;

int main(int argc, char** argv) {
  CLI::App app{"img2vm: turn OCI/Docker images into microVMs and boot them", "img2vm"};
  app.set_version_flag("-V,--version", std::string("img2vm ") + std::string(version()));
  app.require_subcommand(1);

  Globals g;
  app.add_flag("--json", g.json, "Machine-readable output (one JSON object per line)");
  app.add_flag("-v,--verbose", g.verbose, "More detail on stderr");

  // One entry per command, by the name it registers. Building a command's options costs more
  // than the rest of a start (CLI11 makes an object per option and flag), so a command line that
  // names one gets that one alone; anything else (help, no command, an unknown word) gets all.
  struct Command {
    std::string_view name;
    void (*add)(CLI::App&, Globals&, Action*);
  };
  static constexpr Command kCommands[] = {
      {"info", register_info},
      {"pull", register_pull},
      {"images", register_images},
      {"inspect", register_inspect},
      {"rm", register_rm},
      {"prune", register_prune},
      {"convert", register_convert},
      {"kernel", register_kernel},
      {"run", register_run},
      {"volume", register_volume},
      {"snapshot", register_snapshot},
      {"rmi", register_rmi},
      {"ps", register_ps},
      {"logs", register_logs},
      {"stop", register_stop},
      {"kill", register_kill},
      {"wait", register_wait},
      {"exec", register_exec},
  };
  const Command* named = nullptr;
  for (int i = 1; i < argc && !named; ++i) {
    const std::string_view w = argv[i];
    if (w.empty() || w[0] == '-') continue;  // the global options are flags: no values
    for (const Command& c : kCommands)
      if (c.name == w) named = &c;
    break;
  }
  Action action;
  for (const Command& c : kCommands)
    if (!named || named == &c) c.add(app, g, &action);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // The first word that is not a flag names the command; say so plainly when it is unknown.
    for (int i = 1; i < argc; ++i) {
      std::string w = argv[i];
      if (w.empty() || w[0] == '-') continue;
      bool known = false;
      for (const CLI::App* s : app.get_subcommands({})) known |= s->check_name(w);
      if (!known) {
        std::cerr << "img2vm: unknown command '" << w << "' (see 'img2vm --help')\n";
        return kExitUsage;
      }
      break;
    }
    std::cerr << "img2vm: " << e.what() << " (see 'img2vm --help')\n";
    return kExitUsage;
  }
  if (!action) {
    std::cerr << "img2vm: no command given (see 'img2vm --help')\n";
    return kExitUsage;
  }
  try {
    return action();
  } catch (const Error& e) {
    std::cerr << "img2vm: " << e.what() << "\n";
    return kExitError;
  } catch (const std::exception& e) {
    std::cerr << "img2vm: internal error: " << e.what() << "\n";
    return kExitError;
  }
}
