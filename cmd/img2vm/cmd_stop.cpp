// `img2vm stop [-t SECS] VM...`: the image's StopSignal to the workload, then the VM killed
// after SECS (default: the VM's --stop-timeout, 10 s), as docker stop.
#include <iostream>

#include "commands.hpp"
#include "vm_refs.hpp"

namespace img2vm::cli {

void register_stop(CLI::App& app, Globals& /*g*/, Action* slot) {
  auto refs = std::make_shared<std::vector<std::string>>();
  auto secs = std::make_shared<int>(-1);
  auto* sub =
      app.add_subcommand("stop", "Stop running VMs (StopSignal, then kill), like docker stop");
  add_global_flags(*sub);
  sub->add_option("-t,--time", *secs, "Seconds to wait before killing the VM");
  sub->add_option("vm", *refs, "VM names or ids")->required();
  sub->callback([slot, refs, secs] {
    *slot = [refs, secs] {
      if (*secs > 365 * 86400) throw Error(ErrorKind::kInvalidArgument, "-t: at most a year");
      runtime::VmStore store;
      return for_each_vm(*refs, [&](const std::string& ref) {
        runtime::VmRecord r = store.get(ref);
        store.stop(r.id, *secs >= 0 ? std::chrono::milliseconds(std::chrono::seconds(*secs))
                                    : r.stop_timeout);
        std::cout << ref << "\n";
      });
    };
  });
}

}  // namespace img2vm::cli
