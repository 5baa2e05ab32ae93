// hello: pull an image into a temporary store, convert it to an ext4 root filesystem and boot
// it where KVM allows, printing the workload's exit status; without KVM (or without a guest
// kernel) it stops after the conversion and says why. Usage: hello REFERENCE
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>

#include "img2vm/base/fd.hpp"
#include "img2vm/runtime/runtime.hpp"
#include "img2vm/vm/kvm_detect.hpp"

namespace fs = std::filesystem;
using namespace img2vm;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: hello REFERENCE (e.g. localhost:5000/app:1)\n");
    return 2;
  }
  try {
    TempDir home("img2vm-hello");  // removed with everything in it at the end
    registry::Store store(home.path() / "store");
    runtime::ImageOptions io;
    io.hooks.note = [](std::string_view note) {
      std::fprintf(stderr, "%.*s\n", int(note.size()), note.data());
    };
    registry::PullResult pulled = runtime::pull(store, argv[1], io);
    std::printf("pulled %s (manifest %s)\n", pulled.name.c_str(),
                pulled.manifest_digest.str().c_str());

    auto src = runtime::resolve_image(store, argv[1], io);
    runtime::RootfsResult root = runtime::convert_to_cache(store, *src, {});
    std::printf("converted to %s (%ju bytes)\n", root.path.c_str(),
                uintmax_t(fs::file_size(root.path)));

    vm::KvmInfo kvm = vm::detect_kvm();
    if (kvm.kind == vm::KvmKind::kUnavailable) {
      std::printf("not booting: KVM is unavailable on this host (%s)\n", kvm.detail.c_str());
      return 0;
    }
    auto kernel = runtime::find_guest_kernel();
    if (!kernel) {
      std::printf("not booting: no guest kernel is built yet (run `img2vm kernel build`)\n");
      return 0;
    }
    runtime::MachineOptions mo;
    mo.kernel = kernel->path;
    mo.rootfs = root.path;
    mo.network = runtime::NetworkMode::kNone;
    runtime::PreparedMachine pm = runtime::build_machine(std::move(mo));
    auto vmm = runtime::VmmProcess::start(runtime::vmm_spec(pm.config));
    std::printf("workload exited with status %d\n", vmm.wait().host_exit_code());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hello: %s\n", e.what());
    return 1;
  }
}
