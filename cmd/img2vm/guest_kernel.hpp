// Where the guest kernel comes from: an explicit file (--kernel / IMG2VM_KERNEL) or our own
// build from Debian's linux-source-6.1, cached by guest/kernel/build.sh under
// ~/.cache/img2vm/kernel/<hash of inputs>/.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace img2vm::cli {

struct GuestKernel {
  std::filesystem::path path;       // the kernel image to boot (vmlinux ELF or bzImage)
  std::string source;               // "--kernel", "IMG2VM_KERNEL" or "cache"
  std::filesystem::path cache_dir;  // for "cache": the build's directory (vmlinux, bzImage, config, info.json)
};

// The kernel build script: $IMG2VM_DATA_DIR/kernel/build.sh when installed, else the source
// tree's guest/kernel/build.sh. Throws if neither exists.
std::filesystem::path kernel_build_script();

// An explicit kernel (the flag's value, else $IMG2VM_KERNEL), else the cached build; nullopt
// when nothing is built yet. An explicit path that does not exist is an error naming it.
std::optional<GuestKernel> find_guest_kernel(const std::string& flag_value = "");

// Runs the build script (its progress goes to stderr) and returns the cached kernel.
GuestKernel build_guest_kernel(bool force);

}  // namespace img2vm::cli
