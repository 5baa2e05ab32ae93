#include "img2vm/vm/guest_memory.hpp"

#include <linux/mman.h>
#include <sys/mman.h>

#include <cstdint>

#include <string>

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

GuestMemory::GuestMemory(uint64_t size, Pages pages) {
  if (size == 0) throw Error(ErrorKind::kInvalidArgument, "guest memory size must not be 0");
  const bool huge = pages == Pages::kHuge2M;
  const uint64_t align = huge ? (uint64_t{2} << 20) : 0x1000;
  if (size > UINT64_MAX - align) throw Error(ErrorKind::kInvalidArgument, "guest memory size too large");
  size_ = (size + align - 1) & ~(align - 1);
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | (huge ? MAP_HUGETLB | MAP_HUGE_2MB | MAP_POPULATE : MAP_NORESERVE);
  void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED && huge)
    throw_errno("cannot map " + std::to_string(size_ >> 20) + " MiB of guest memory in 2 MiB huge pages (needs " +
                std::to_string(size_ >> 21) + " free in /proc/sys/vm/nr_hugepages)");
  if (p == MAP_FAILED) throw_errno("cannot map " + std::to_string(size_ >> 20) + " MiB of guest memory");
  base_ = static_cast<uint8_t*>(p);
  // Not dumped with the VMM's own core.
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
