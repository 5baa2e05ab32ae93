#include "bus.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "img2vm/base/error.hpp"

namespace img2vm::vm {

namespace {
std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}
std::string describe(uint64_t base, uint64_t len, const std::string& name) {
  return name + " [" + hex(base) + "-" + hex(base + (len - 1)) + "]";
}
}  // namespace

void Bus::add(uint64_t base, uint64_t len, std::string name, Handler handler) {
  if (len == 0 || base + (len - 1) < base)
    throw Error(ErrorKind::kInternal,
                name_ + " bus: " + name + " claims an empty or wrapping range at " + hex(base));
  // The first range starting above `base`; only it and the one before may overlap.
  auto next = std::upper_bound(ranges_.begin(), ranges_.end(), base,
                               [](uint64_t a, const Range& r) { return a < r.base; });
  auto clash = [&](const Range& r) {
    throw Error(ErrorKind::kInternal, name_ + " bus: " + describe(base, len, name) + " overlaps " +
                                          describe(r.base, r.len, r.name));
  };
  if (next != ranges_.end() && next->base - base < len) clash(*next);
  if (next != ranges_.begin()) {
    const Range& prev = *std::prev(next);
    if (base - prev.base < prev.len) clash(prev);
  }
  ranges_.insert(next, Range{base, len, std::move(name), std::move(handler)});
}

const Bus::Range* Bus::find(uint64_t addr) const {
  auto next = std::upper_bound(ranges_.begin(), ranges_.end(), addr,
                               [](uint64_t a, const Range& r) { return a < r.base; });
  if (next == ranges_.begin()) return nullptr;
  const Range& r = *std::prev(next);
  return addr - r.base < r.len ? &r : nullptr;
}

void Bus::access(uint64_t addr, bool write, uint8_t* data, unsigned size) const {
  if (const Range* r = find(addr))
    r->handler(addr - r->base, write, data, size);
  else
    unclaimed(write, data, size);
}

void Bus::unclaimed(bool write, uint8_t* data, unsigned size) const {
  if (!write) std::memset(data, unclaimed_, size);
}

}  // namespace img2vm::vm
