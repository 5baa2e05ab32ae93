// `img2vm-oci create [--bundle DIR] [--pid-file F] [--console-socket S] ID`: boots the
// container's VM and leaves its workload waiting for `start`.
#include "oci_cli.hpp"

namespace img2vm::oci_cli {

void register_create(CLI::App& app, Globals& g, Action* slot) {
  struct Opts {
    std::string id, bundle = ".", pid_file, console_socket;
    bool no_pivot = false, no_new_keyring = false;
    int preserve_fds = 0;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("create", "Create a container (its VM boots; start runs it)");
  sub->add_option("-b,--bundle", o->bundle, "The bundle directory (holds config.json)");
  sub->add_option("--pid-file", o->pid_file,
                  "Write the pid of the process whose exit status is the workload's");
  sub->add_option("--console-socket", o->console_socket,
                  "A unix socket for the terminal's master (process.terminal)");
  sub->add_flag("--no-pivot", o->no_pivot, "Accepted (runc's); nothing to pivot in a VM");
  sub->add_flag("--no-new-keyring", o->no_new_keyring, "Accepted (runc's)");
  sub->add_option("--preserve-fds", o->preserve_fds, "Accepted (runc's); not passed to the VM");
  sub->add_option("id", o->id, "The container id")->required();
  sub->callback([slot, o, &g] {
    *slot = [o, &g] {
      runtime::OciCreateOptions c;
      c.id = o->id;
      c.bundle = o->bundle;
      c.pid_file = o->pid_file;
      c.console_socket = o->console_socket;
      c.kernel = g.kernel;
      c.warn = [&g, id = o->id](const std::string& w) { g.warn("container " + id + ": " + w); };
      g.runtime().create(c);
      return 0;
    };
  });
}

}  // namespace img2vm::oci_cli
