// img2vm-vmm: the VMM process. `img2vm run` resolves, pulls and converts the image, then execs
// this program with the prepared VM, so the process that runs next to the guest holds only the
// runner (lib/vm and its few libraries): less memory per VM and no registry, TLS, archive or
// ext4 code within a guest's reach. It can also boot a VM described by a file of its own:
//
//   img2vm-vmm --spec FILE     {"machine": {...}, "attach": {...}, "summary": {...}}
//   img2vm-vmm --spec-fd N     the same from an open file descriptor (what img2vm run passes)
//   img2vm-vmm --monitor DIR [--ready-fd N]
//                              a detached VM's monitor (runtime::run_monitor, vms.hpp): runs
//                              img2vm-vmm --spec-fd on DIR/spec.json, its output to
//                              DIR/console.log, and records its end in DIR/state.json
//
// "machine" is a MachineConfig in machine_json.hpp's form; "attach" and "summary" are optional
// (attached_run.hpp; docs/vm.md "The VMM process"). Exit code: the workload's, or 122-125/130.
// Once the VM runs, every thread of this process is under a seccomp filter, this one included;
// with "attach": {"run_as": ...} (img2vm run --network tap, as root) it has given up root first.
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "attached_run.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/runtime/vms.hpp"

namespace {

constexpr int kExitFailed = 125;  // as img2vm run: the VM could not be run
constexpr int kExitUsage = 2;

std::string read_fd(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::pread(fd, buf, sizeof buf, off_t(out.size()));
    if (n < 0 && errno == ESPIPE) n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      img2vm::throw_errno("cannot read the VM spec from fd " + std::to_string(fd));
    }
    if (n == 0) return out;
    out.append(buf, size_t(n));
    if (out.size() > (16u << 20))
      throw img2vm::Error(img2vm::ErrorKind::kLimit, "the VM spec is larger than 16 MiB");
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace img2vm;
  if ((argc == 3 || argc == 5) && std::strcmp(argv[1], "--monitor") == 0) {
    int ready = -1;
    if (argc == 5) {
      char* end = nullptr;
      long fd = std::strtol(argv[4], &end, 10);
      if (std::strcmp(argv[3], "--ready-fd") != 0 || !*argv[4] || *end || fd < 3 || fd > 1 << 20) {
        std::cerr << "usage: img2vm-vmm --monitor DIR [--ready-fd N]\n";
        return kExitUsage;
      }
      ready = int(fd);
    }
    try {
      return runtime::run_monitor(argv[2], ready);
    } catch (const std::exception& e) {
      std::cerr << "img2vm: monitor: " << e.what() << "\n";
      return kExitFailed;
    }
  }
  if (argc != 3 ||
      (std::strcmp(argv[1], "--spec") != 0 && std::strcmp(argv[1], "--spec-fd") != 0)) {
    std::cerr << "usage: img2vm-vmm --spec FILE | --spec-fd N | --monitor DIR [--ready-fd N]\n";
    return kExitUsage;
  }
  vm::MachineConfig config;
  cli::AttachOptions options;
  nlohmann::json summary;
  try {
    std::string text;
    if (std::strcmp(argv[1], "--spec") == 0) {
      text = read_file(argv[2]);
    } else {
      char* end = nullptr;
      long fd = std::strtol(argv[2], &end, 10);
      if (!*argv[2] || *end || fd < 0 || fd > 1 << 20)
        throw Error(ErrorKind::kInvalidArgument,
                    std::string("--spec-fd: not a file descriptor: ") + argv[2]);
      UniqueFd owned{int(fd)};
      text = read_fd(owned.get());
    }
    cli::parse_attach_spec(text, config, options, summary);
    return cli::run_attached(std::move(config), options, std::move(summary), true);
  } catch (const Error& e) {
    std::cerr << "img2vm: " << e.what() << "\n";
    cli::write_exit_record(options.exit_fd, kExitFailed, e.what());
    return kExitFailed;
  } catch (const std::exception& e) {
    std::cerr << "img2vm: internal error: " << e.what() << "\n";
    cli::write_exit_record(options.exit_fd, kExitFailed, e.what());
    return kExitFailed;
  }
}
