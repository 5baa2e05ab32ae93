// img2vm: OCI/Docker images to microVMs. Parses the command line, runs one subcommand, and turns
// every failure into one line on stderr and a non-zero exit code.
#include <CLI/CLI.hpp>
#include <exception>
#include <iostream>

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

  Action action;
  register_info(app, g, &action);
  register_pull(app, g, &action);
  register_images(app, g, &action);
  register_inspect(app, g, &action);
  register_rm(app, g, &action);
  register_prune(app, g, &action);
  register_convert(app, g, &action);
  register_kernel(app, g, &action);
  register_run(app, g, &action);
  register_volume(app, g, &action);
  register_snapshot(app, g, &action);
  register_rmi(app, g, &action);
  register_ps(app, g, &action);
  register_logs(app, g, &action);
  register_stop(app, g, &action);
  register_kill(app, g, &action);
  register_wait(app, g, &action);
  register_exec(app, g, &action);

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
