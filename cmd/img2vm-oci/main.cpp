// img2vm-oci: an OCI runtime with runc's command line whose containers are microVMs (podman
// --runtime, containerd's runc shim via BinaryName). Every failure is one line on stderr (and
// in --log, as runc writes it) and exit code 1.
#include <fcntl.h>
#include <unistd.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "img2vm/base/version.hpp"
#include "img2vm/runtime/vms.hpp"
#include "oci_cli.hpp"

namespace img2vm::oci_cli {

runtime::OciRuntime Globals::runtime() const {
  return runtime::OciRuntime(root.empty() ? runtime::OciRuntime::default_root()
                                          : std::filesystem::path(root));
}

void Globals::log_line(const std::string& level, const std::string& msg) const {
  if (log.empty()) {
    std::cerr << "img2vm-oci: " << (level == "error" ? "" : level + ": ") << msg << "\n";
    return;
  }
  std::string line;
  if (log_format == "json")
    line =
        nlohmann::json{{"level", level}, {"msg", msg}, {"time", runtime::now_rfc3339_nano()}}.dump(
            -1, ' ', false, nlohmann::json::error_handler_t::replace) +
        "\n";
  else
    line = runtime::now_rfc3339_nano() + " " + level + ": " + msg + "\n";
  int fd = ::open(log.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    std::cerr << "img2vm-oci: " << msg << "\n";
    return;
  }
  (void)!::write(fd, line.data(), line.size());
  ::close(fd);
}

}  // namespace img2vm::oci_cli

using namespace img2vm;
using namespace img2vm::oci_cli;

int main(int argc, char** argv) {
  CLI::App app{"img2vm-oci: an OCI runtime (runc's command line) whose containers are microVMs",
               "img2vm-oci"};
  app.set_version_flag("-v,--version", std::string("img2vm-oci version ") + std::string(version()) +
                                           "\nspec: " + runtime::kOciRuntimeSpecVersion);
  app.require_subcommand(1);
  Globals g;
  app.add_option("--root", g.root,
                 "Where the containers' state is kept (default: /run/img2vm-oci)");
  app.add_option("--log", g.log, "Append errors and warnings to this file");
  app.add_option("--log-format", g.log_format, "text or json")
      ->check(CLI::IsMember({"text", "json"}));
  app.add_flag("--systemd-cgroup", g.systemd_cgroup,
               "Accepted (runc's); a VM is not placed in a cgroup of the host");
  app.add_flag("--debug", g.debug, "Accepted (runc's)");
  app.add_option("--rootless", g.rootless, "Accepted (runc's)");

  Action action;
  register_create(app, g, &action);
  register_start(app, g, &action);
  register_state(app, g, &action);
  register_kill(app, g, &action);
  register_delete(app, g, &action);
  register_ps(app, g, &action);
  register_list(app, g, &action);
  register_features(app, g, &action);
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
    g.log_line("error", std::string(e.what()) + " (see 'img2vm-oci --help')");
    if (!g.log.empty()) std::cerr << "img2vm-oci: " << e.what() << "\n";
    return 2;
  }
  try {
    return action ? action() : 2;
  } catch (const std::exception& e) {
    g.log_line("error", e.what());
    if (!g.log.empty()) std::cerr << "img2vm-oci: " << e.what() << "\n";
    return 1;
  }
}
