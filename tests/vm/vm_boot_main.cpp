// vm_boot: boots a kernel in img2vm::vm::Machine from the command line, for manual checks and
// measurements (the nested rig runs it in L1). Not installed; `img2vm run` is the user tool.
//   vm_boot KERNEL [--initrd F] [--cmdline S] [--memory MIB] [--cpus N] [--timeout MS] [--disk
//   F[:ro]]...
#include <cstdio>
#include <cstdlib>
#include <string>

#include "img2vm/base/error.hpp"
#include "img2vm/vm/machine.hpp"

using namespace img2vm::vm;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: vm_boot KERNEL [--initrd F] [--cmdline S] [--memory MIB] [--cpus N] "
                 "[--timeout MS] [--disk F[:ro]]...\n");
    return 2;
  }
  MachineConfig c;
  c.kernel = argv[1];
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--initrd")
      c.initrd = v;
    else if (k == "--cmdline")
      c.cmdline = v;
    else if (k == "--memory")
      c.memory_mib = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--cpus")
      c.vcpus = unsigned(std::strtoul(v.c_str(), nullptr, 10));
    else if (k == "--timeout")
      c.timeout = std::chrono::milliseconds(std::strtoll(v.c_str(), nullptr, 10));
    else if (k == "--disk") {
      bool ro = v.size() > 3 && v.substr(v.size() - 3) == ":ro";
      c.disks.push_back({ro ? v.substr(0, v.size() - 3) : v,
                         ro ? img2vm::vm::DiskMode::kReadOnly : img2vm::vm::DiskMode::kReadWrite,
                         ""});
    } else {
      std::fprintf(stderr, "vm_boot: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  try {
    Machine m(c);
    auto r = m.run();
    auto ms = [](const std::optional<std::chrono::microseconds>& t) {
      return t ? std::to_string(double(t->count()) / 1000.0) + " ms" : std::string("-");
    };
    std::fprintf(stderr, "\nvm_boot: %s (host exit code %d)\n", r.describe().c_str(),
                 r.host_exit_code());
    std::fprintf(stderr, "vm_boot: timings: setup %s, first entry %s, init %s, exec %s, end %s\n",
                 ms(r.timings.setup_done).c_str(), ms(r.timings.first_entry).c_str(),
                 ms(r.timings.init_started).c_str(), ms(r.timings.workload_exec).c_str(),
                 ms(r.timings.ended).c_str());
    return r.host_exit_code();
  } catch (const img2vm::Error& e) {
    std::fprintf(stderr, "vm_boot: %s\n", e.what());
    return 125;
  }
}
