#include "img2vm/vm/guest_memory.hpp"

#include <sys/mman.h>

#include <string>

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

GuestMemory::GuestMemory(uint64_t size) {
  if (size == 0) throw Error(ErrorKind::kInvalidArgument, "guest memory size must not be 0");
  size_ = (size + 0xfff) & ~uint64_t{0xfff};
  void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
  if (p == MAP_FAILED) throw_errno("cannot map " + std::to_string(size_ >> 20) + " MiB of guest memory");
  base_ = static_cast<uint8_t*>(p);
  // Merge-able and not dumped with the VMM's own core.
  ::madvise(p, size_, MADV_DONTDUMP);
}

GuestMemory::GuestMemory(GuestMemory&& o) noexcept : base_(o.base_), size_(o.size_) {
  o.base_ = nullptr;
  o.size_ = 0;
}

GuestMemory::~GuestMemory() {
  if (base_) ::munmap(base_, size_);
}

}  // namespace img2vm::vm
