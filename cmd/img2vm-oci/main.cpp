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

std::filesystem::path Globals::root_dir() const {
  return root.empty() ? runtime::OciRuntime::default_root() : std::filesystem::path(root);
}

runtime::OciRuntime Globals::runtime() const { return runtime::OciRuntime(root_dir()); }

namespace {

// Appends one line at `level` to `file` as runc writes its log (`json`: {"level", "msg",
// "time"}); false when the file cannot be opened.
bool append_log(const std::filesystem::path& file, bool json, const std::string& level,
                const std::string& msg) {
  std::string line;
  if (json)
    line =
        nlohmann::json{{"level", level}, {"msg", msg}, {"time", runtime::now_rfc3339_nano()}}.dump(
            -1, ' ', false, nlohmann::json::error_handler_t::replace) +
        "\n";
  else
    line = runtime::now_rfc3339_nano() + " " + level + ": " + msg + "\n";
  int fd = ::open(file.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  (void)!::write(fd, line.data(), line.size());
  ::close(fd);
  return true;
}

}  // namespace

void Globals::log_line(const std::string& level, const std::string& msg) const {
  if (log.empty()) {
    std::cerr << "img2vm-oci: " << (level == "error" ? "" : level + ": ") << msg << "\n";
    return;
  }
  if (!append_log(log, log_format == "json", level, msg))
    std::cerr << "img2vm-oci: " << msg << "\n";
}

void Globals::warn(const std::string& msg) const {
  if (!log.empty() || ::isatty(2)) {
    log_line("warning", msg);
    return;
  }
  std::error_code ec;
  std::filesystem::create_directories(root_dir(), ec);
  const std::filesystem::path file = root_dir() / kDefaultLog;
  // Every container adds a dozen lines: two files of kDefaultLogMax at the most.
  if (std::filesystem::file_size(file, ec) >= kDefaultLogMax && !ec)
    std::filesystem::rename(file, file.string() + ".1", ec);
  if (!append_log(file, false, "warning", msg)) std::cerr << "img2vm-oci: warning: " << msg << "\n";
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
  app.add_option("--kernel", g.kernel,
                 "The guest kernel when the annotation org.img2vm.kernel names none (before "
                 "IMG2VM_KERNEL and the cached build); podman: --runtime-flag kernel=PATH");

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
