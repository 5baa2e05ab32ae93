// Where the guest kernel comes from: an explicit file (the caller's, or $IMG2VM_KERNEL) or
// img2vm's own build from Debian's linux-source-6.1, cached by guest/kernel/build.sh under
// ~/.cache/img2vm/kernel/<hash of inputs>/.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace img2vm::runtime {

// A guest kernel image and where it was found.
struct GuestKernel {
  std::filesystem::path path;  // the kernel image to boot (vmlinux ELF or bzImage)
  std::string source;          // "--kernel" (the caller's), "IMG2VM_KERNEL" or "cache"
  std::filesystem::path
      cache_dir;  // for "cache": the build's directory (vmlinux, bzImage, config, info.json)
};

// The kernel build script: $IMG2VM_DATA_DIR/kernel/build.sh, the installed one, else the source
// tree's guest/kernel/build.sh. Throws Error(kNotFound) if none exists.
std::filesystem::path kernel_build_script();

// `explicit_path` when given, else $IMG2VM_KERNEL, else the cached build; nullopt when nothing
// is built yet. An explicit path that does not exist is an Error(kNotFound) naming it.
std::optional<GuestKernel> find_guest_kernel(const std::string& explicit_path = "");

// Runs the build script (minutes, once; its progress goes to the inherited stderr) and returns
// the cached kernel. `force` rebuilds.
GuestKernel build_guest_kernel(bool force);

}  // namespace img2vm::runtime
