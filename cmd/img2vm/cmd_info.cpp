// `img2vm info`: version, store location and what virtualization this host offers.
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.hpp"
#include "commands.hpp"
#include "img2vm/base/version.hpp"
#include "img2vm/vm/kvm_detect.hpp"

namespace img2vm::cli {

namespace {
std::string default_home() {
  if (const char* h = std::getenv("IMG2VM_HOME"); h && *h) return h;
  if (const char* x = std::getenv("XDG_DATA_HOME"); x && *x) return std::string(x) + "/img2vm";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.local/share/img2vm";
  return ".img2vm";
}
}  // namespace

void register_info(CLI::App& app, Globals& g, Action* slot) {
  auto* sub = app.add_subcommand("info", "Show the version, the store and this host's KVM support");
  add_global_flags(*sub);
  sub->callback([&g, slot] {
    *slot = [&g] {
      vm::KvmInfo kvm = vm::detect_kvm();
      if (g.json) {
        nlohmann::json j = {{"version", std::string(version())},
                            {"home", default_home()},
                            {"kvm",
                             {{"kind", vm::to_string(kvm.kind)},
                              {"module", kvm.module},
                              {"api_version", kvm.api_version},
                              {"under_hypervisor", kvm.under_hypervisor},
                              {"detail", kvm.detail}}}};
        std::cout << j.dump() << "\n";
      } else {
        std::cout << "img2vm " << version() << "\n"
                  << "home:  " << default_home() << "\n"
                  << "kvm:   " << vm::to_string(kvm.kind) << " — " << kvm.detail << "\n";
      }
      return kExitOk;
    };
  });
}

}  // namespace img2vm::cli
