// Guest physical memory: one mapping from guest address 0, owned (RAII): anonymous and private,
// or (Sharing::kShared) a memfd mapped shared, whose fd a vhost-user backend maps too. Every
// access by a device goes through these checked accessors; a guest-supplied address or length
// that does not fit is reported as nullptr / false, never dereferenced.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <type_traits>

#include "img2vm/base/fd.hpp"

namespace img2vm::vm {

class GuestMemory {
 public:
  enum class Pages { kNormal, kHuge2M };
  enum class Sharing { kPrivate, kShared };
  // Maps `size` bytes (rounded up to 4 KiB, or 2 MiB for kHuge2M), zero-filled. kNormal is
  // MAP_NORESERVE (the host commits pages as the guest touches them); kHuge2M takes 2 MiB pages
  // from the host's hugetlb pool up front (fewer TLB misses, faster boot of large guests) and
  // throws Error saying how many are needed when the pool is short. Guard pages (at least a
  // page, or 2 MiB, on each side, inaccessible) make a stray access just outside it fault.
  // kShared backs the same pages with a memfd (MFD_HUGETLB for kHuge2M), see fd().
  explicit GuestMemory(uint64_t size, Pages pages = Pages::kNormal,
                       Sharing sharing = Sharing::kPrivate);
  // Guest RAM from a snapshot's memory file (exactly `size` bytes, a multiple of 4 KiB), mapped
  // privately: a page is read from the file when the guest first touches it and stays shared
  // in the page cache with every other VM mapped from the same file until someone writes to it
  // (copy on write); the file itself is never written. Throws Error naming `path`.
  static GuestMemory from_file(uint64_t size, const std::filesystem::path& path);
  GuestMemory(GuestMemory&& o) noexcept;
  GuestMemory& operator=(GuestMemory&&) = delete;
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;
  ~GuestMemory();

  uint64_t size() const noexcept { return size_; }
  uint8_t* host_base() const noexcept { return base_; }
  // The memfd behind guest RAM (offset 0 is guest address 0), or -1 when it is private.
  int fd() const noexcept { return fd_.get(); }

  // True when [gpa, gpa+len) lies inside guest memory (overflow-safe; len 0 is fine inside).
  bool contains(uint64_t gpa, uint64_t len) const noexcept {
    return gpa <= size_ && len <= size_ - gpa;
  }
  // Host pointer for [gpa, gpa+len), or nullptr if it does not fit.
  uint8_t* ptr(uint64_t gpa, uint64_t len) const noexcept {
    return contains(gpa, len) ? base_ + gpa : nullptr;
  }
  std::span<uint8_t> span(uint64_t gpa, uint64_t len) const noexcept {
    uint8_t* p = ptr(gpa, len);
    return p ? std::span<uint8_t>(p, len) : std::span<uint8_t>();
  }

  bool read(uint64_t gpa, void* dst, uint64_t len) const noexcept {
    const uint8_t* p = ptr(gpa, len);
    if (!p) return false;
    std::memcpy(dst, p, len);
    return true;
  }
  bool write(uint64_t gpa, const void* src, uint64_t len) const noexcept {
    uint8_t* p = ptr(gpa, len);
    if (!p) return false;
    std::memcpy(p, src, len);
    return true;
  }
  template <typename T>
  std::optional<T> load(uint64_t gpa) const noexcept {
    static_assert(std::is_trivially_copyable_v<T>);
    T v;
    if (!read(gpa, &v, sizeof v)) return std::nullopt;
    return v;
  }
  template <typename T>
  bool store(uint64_t gpa, const T& v) const noexcept {
    static_assert(std::is_trivially_copyable_v<T>);
    return write(gpa, &v, sizeof v);
  }

  // Writes guest RAM to `fd` (an empty file) as a sparse file: pages of zeros become holes.
  void save_to(int fd, const std::string& what) const;

 private:
  GuestMemory() = default;
  // Reserves size_ (already aligned to `align`) plus guard pages; returns where RAM goes.
  uint8_t* reserve(uint64_t align);
  uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint8_t* reserved_ = nullptr;  // the mapping with the guard pages around guest RAM
  uint64_t reserved_size_ = 0;
  UniqueFd fd_;
};

}  // namespace img2vm::vm
