// A snapshot's saved disk writes (disk-N, disk_view.cpp's format) are read back from the store,
// where anything may have happened to them: opening a copy-on-write view over them must either
// refuse them with an Error or give a view whose every sector reads, never crash.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/vm/disk_view.hpp"

namespace {

constexpr uint64_t kDiskBytes = 64 * 512;

std::string fd_path(int fd) { return "/proc/self/fd/" + std::to_string(fd); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  img2vm::UniqueFd base(::memfd_create("fuzz-base", MFD_CLOEXEC));
  img2vm::UniqueFd saved(::memfd_create("fuzz-saved", MFD_CLOEXEC));
  if (!base || !saved || ::ftruncate(base.get(), kDiskBytes) != 0) __builtin_trap();
  if (size && ::pwrite(saved.get(), data, size, 0) != static_cast<ssize_t>(size)) __builtin_trap();
  try {
    auto view =
        img2vm::vm::open_disk_view_with_writes(fd_path(base.get()), fd_path(saved.get()), "/tmp");
    if (view->size() != kDiskBytes) __builtin_trap();
    std::vector<uint8_t> buf(kDiskBytes);
    if (!view->read(buf.data(), buf.size(), 0)) __builtin_trap();
  } catch (const img2vm::Error&) {
  }
  return 0;
}
