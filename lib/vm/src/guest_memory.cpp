#include "guest_memory.hpp"

#include <fcntl.h>
#include <linux/mman.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <string>
#include <utility>

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

GuestMemory::GuestMemory(uint64_t size, Pages pages, Sharing sharing) {
  if (size == 0) throw Error(ErrorKind::kInvalidArgument, "guest memory size must not be 0");
  const bool huge = pages == Pages::kHuge2M;
  const uint64_t align = huge ? (uint64_t{2} << 20) : 0x1000;
  if (size > UINT64_MAX / 2 - 3 * align)
    throw Error(ErrorKind::kInvalidArgument, "guest memory size too large");
  size_ = (size + align - 1) & ~(align - 1);
  uint8_t* at = reserve(align);
  int flags = MAP_FIXED | (huge ? MAP_POPULATE : MAP_NORESERVE);
  if (sharing == Sharing::kShared) {
    // A memfd another process (a vhost-user backend) can map: guest RAM is its pages.
    // MFD_HUGE_2MB has MAP_HUGE_2MB's value (both encode log2(size) at bit 26); glibc's
    // headers do not define it.
    fd_.reset(::memfd_create("img2vm-guest-ram",
                             MFD_CLOEXEC | (huge ? MFD_HUGETLB | unsigned(MAP_HUGE_2MB) : 0u)));
    if (!fd_ || ::ftruncate(fd_.get(), off_t(size_)) != 0) {
      int e = errno;
      ::munmap(reserved_, reserved_size_);
      reserved_ = nullptr;
      throw_errno("cannot create the shared memory for " + std::to_string(size_ >> 20) +
                      " MiB of guest memory",
                  e);
    }
    flags |= MAP_SHARED;
  } else {
    flags |= MAP_PRIVATE | MAP_ANONYMOUS | (huge ? MAP_HUGETLB | MAP_HUGE_2MB : 0);
  }
  void* p = ::mmap(at, size_, PROT_READ | PROT_WRITE, flags, fd_.get(), 0);
  if (p == MAP_FAILED) {
    int e = errno;
    ::munmap(reserved_, reserved_size_);
    reserved_ = nullptr;
    if (huge)
      throw_errno("cannot map " + std::to_string(size_ >> 20) +
                      " MiB of guest memory in 2 MiB huge pages (needs " +
                      std::to_string(size_ >> 21) + " free in /proc/sys/vm/nr_hugepages)",
                  e);
    throw_errno("cannot map " + std::to_string(size_ >> 20) + " MiB of guest memory", e);
  }
  base_ = static_cast<uint8_t*>(p);
  // Not dumped with the VMM's own core.
  ::madvise(p, size_, MADV_DONTDUMP);
}

uint8_t* GuestMemory::reserve(uint64_t align) {
  // Guest RAM sits inside a larger reservation that stays inaccessible (PROT_NONE, no memory
  // behind it): a device access just outside guest RAM faults instead of reaching whatever the
  // process has mapped next to it. At least `align` bytes on each side, and RAM aligned.
  reserved_size_ = size_ + 3 * align;
  void* r = ::mmap(nullptr, reserved_size_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
  if (r == MAP_FAILED)
    throw_errno("cannot reserve " + std::to_string(size_ >> 20) +
                " MiB of address space for guest memory");
  reserved_ = static_cast<uint8_t*>(r);
  return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(reserved_) + 2 * align - 1) &
                                    ~uintptr_t(align - 1));
}

GuestMemory GuestMemory::from_file(uint64_t size, const std::filesystem::path& path) {
  if (size == 0 || size % 0x1000 != 0 || size > UINT64_MAX / 2)
    throw Error(ErrorKind::kInvalidArgument,
                "guest memory size must be a positive multiple of 4 KiB");
  UniqueFd fd = open_file(path, O_RDONLY);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno("cannot stat " + path.string());
  if (!S_ISREG(st.st_mode))
    throw Error(ErrorKind::kIntegrity, path.string() + " is not a regular file");
  if (uint64_t(st.st_size) != size)
    throw Error(ErrorKind::kIntegrity, path.string() + " holds " + std::to_string(st.st_size) +
                                           " bytes, the snapshot's guest memory is " +
                                           std::to_string(size));
  GuestMemory m;
  m.size_ = size;
  uint8_t* at = m.reserve(0x1000);
  // Writable but private: the guest's writes go to its own copies of the pages, never the file.
  void* p = ::mmap(at, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE,
                   fd.get(), 0);
  if (p == MAP_FAILED) throw_errno("cannot map " + path.string());
  m.base_ = static_cast<uint8_t*>(p);
  ::madvise(p, size, MADV_DONTDUMP);
  return m;
}

void GuestMemory::save_to(int fd, const std::string& what) const {
  constexpr uint64_t kPage = 0x1000;
  static const uint8_t zeros[kPage] = {};
  uint64_t at = 0;
  while (at < size_) {
    // A run of pages that are not all zeros, written in one go.
    if (std::memcmp(base_ + at, zeros, kPage) == 0) {
      at += kPage;
      continue;
    }
    uint64_t end = at + kPage;
    while (end < size_ && std::memcmp(base_ + end, zeros, kPage) != 0) end += kPage;
    for (uint64_t done = at; done < end;) {
      ssize_t n = ::pwrite(fd, base_ + done, end - done, off_t(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw_errno("cannot write " + what);
      done += uint64_t(n);
    }
    at = end;
  }
  if (::ftruncate(fd, off_t(size_)) != 0) throw_errno("cannot write " + what);
}

GuestMemory::GuestMemory(GuestMemory&& o) noexcept
    : base_(o.base_),
      size_(o.size_),
      reserved_(o.reserved_),
      reserved_size_(o.reserved_size_),
      fd_(std::move(o.fd_)) {
  o.base_ = o.reserved_ = nullptr;
  o.size_ = o.reserved_size_ = 0;
}

GuestMemory::~GuestMemory() {
  if (reserved_) ::munmap(reserved_, reserved_size_);
}

}  // namespace img2vm::vm
