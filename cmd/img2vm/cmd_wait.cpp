// `img2vm wait VM...`: blocks until each VM has ended and prints its exit code, as docker wait.
#include <iostream>

#include "commands.hpp"
#include "vm_refs.hpp"

namespace img2vm::cli {

void register_wait(CLI::App& app, Globals& /*g*/, Action* slot) {
  auto refs = std::make_shared<std::vector<std::string>>();
  auto* sub = app.add_subcommand("wait", "Wait for VMs to end and print their exit codes");
  add_global_flags(*sub);
  sub->add_option("vm", *refs, "VM names or ids")->required();
  sub->callback([slot, refs] {
    *slot = [refs] {
      runtime::VmStore store;
      return for_each_vm(*refs, [&](const std::string& ref) {
        std::cout << store.wait(store.get(ref).id) << std::endl;
      });
    };
  });
}

}  // namespace img2vm::cli
