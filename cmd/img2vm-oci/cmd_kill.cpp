// `img2vm-oci kill [--all] ID [SIGNAL]`: a signal (default TERM) for the container's workload;
// KILL ends the VM.
#include "oci_cli.hpp"

namespace img2vm::oci_cli {

void register_kill(CLI::App& app, Globals& g, Action* slot) {
  struct Opts {
    std::string id, signal = "TERM";
    bool all = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("kill", "Send a signal to a container's process");
  sub->add_flag("-a,--all", o->all,
                "Accepted (runc's): the VM's processes all go with its workload");
  sub->add_option("id", o->id, "The container id")->required();
  sub->add_option("signal", o->signal, "A name (TERM, SIGTERM) or a number; default TERM");
  sub->callback([slot, o, &g] {
    *slot = [o, &g] {
      g.runtime().kill(o->id, runtime::parse_signal(o->signal));
      return 0;
    };
  });
}

}  // namespace img2vm::oci_cli
