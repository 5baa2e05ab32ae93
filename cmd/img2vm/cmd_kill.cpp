// `img2vm kill [-s SIG] VM...`: a signal to the workload (relayed by the VMM), or KILL (the
// default) to end the VM, as docker kill.
#include <iostream>

#include "commands.hpp"
#include "vm_refs.hpp"

namespace img2vm::cli {

void register_kill(CLI::App& app, Globals& /*g*/, Action* slot) {
  auto refs = std::make_shared<std::vector<std::string>>();
  auto sig = std::make_shared<std::string>("KILL");
  auto* sub = app.add_subcommand("kill", "Send a signal to running VMs, like docker kill");
  add_global_flags(*sub);
  sub->add_option("-s,--signal", *sig,
                  "KILL (default: ends the VM), or HUP, INT, QUIT, TERM, USR1, USR2, WINCH for "
                  "the workload");
  sub->add_option("vm", *refs, "VM names or ids")->required();
  sub->callback([slot, refs, sig] {
    *slot = [refs, sig] {
      const int s = runtime::parse_signal(*sig);
      runtime::VmStore store;
      return for_each_vm(*refs, [&](const std::string& ref) {
        store.kill(store.get(ref).id, s);
        std::cout << ref << "\n";
      });
    };
  });
}

}  // namespace img2vm::cli
