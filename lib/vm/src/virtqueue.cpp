#include "virtqueue.hpp"

#include <atomic>

namespace img2vm::vm {

namespace {
struct RawDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(RawDesc) == 16);

uint16_t load_u16_acquire(const GuestMemory& mem, uint64_t gpa) {
  auto* p = reinterpret_cast<const uint16_t*>(mem.ptr(gpa, 2));  // validated and 2-aligned
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
}  // namespace

std::string SplitQueue::validate(const GuestMemory& mem) const {
  if (size == 0 || size > kMaxSize || (size & (size - 1)) != 0)
    return "queue size " + std::to_string(size) + " is not a power of two up to " +
           std::to_string(kMaxSize);
  if (desc_addr % 16 || avail_addr % 2 || used_addr % 4) return "misaligned ring address";
  if (!mem.contains(desc_addr, uint64_t{16} * size)) return "descriptor table outside guest memory";
  if (!mem.contains(avail_addr, 6 + uint64_t{2} * size))
    return "available ring outside guest memory";
  if (!mem.contains(used_addr, 6 + uint64_t{8} * size)) return "used ring outside guest memory";
  return {};
}

std::optional<DescChain> SplitQueue::pop(const GuestMemory& mem) {
  if (broken_ || !ready) return std::nullopt;
  if (auto why = validate(mem); !why.empty()) {
    broken_ = true;
    broken_reason_ = why;
    return std::nullopt;
  }
  uint16_t avail_idx = load_u16_acquire(mem, avail_addr + 2);
  uint16_t pending = uint16_t(avail_idx - last_avail_);
  if (pending == 0) return std::nullopt;
  if (pending > size) {
    broken_ = true;
    broken_reason_ = "available index ran " + std::to_string(pending) +
                     " entries ahead of a queue of " + std::to_string(size);
    return std::nullopt;
  }
  uint16_t head = *mem.load<uint16_t>(avail_addr + 4 + 2 * uint64_t(last_avail_ % size));
  ++last_avail_;
  DescChain chain;
  chain.head = head;
  if (head >= size) {
    // No valid descriptor to return: the ring itself is corrupt.
    broken_ = true;
    broken_reason_ = "descriptor index " + std::to_string(head) + " out of range";
    return std::nullopt;
  }
  uint16_t idx = head;
  for (unsigned n = 0;; ++n) {
    if (n >= size) {
      chain.error = "descriptor chain longer than the queue (a loop?)";
      break;
    }
    RawDesc d = *mem.load<RawDesc>(desc_addr + 16 * uint64_t(idx));  // one copy, then checks
    if (d.flags & kDescIndirect) {
      chain.error = "indirect descriptors were not negotiated";
      break;
    }
    if (!mem.contains(d.addr, d.len)) {
      chain.error = "buffer outside guest memory";
      break;
    }
    chain.elems.push_back({d.addr, d.len, (d.flags & kDescWrite) != 0});
    if (!(d.flags & kDescNext)) break;
    if (d.next >= size) {
      chain.error = "next descriptor index out of range";
      break;
    }
    idx = d.next;
  }
  if (!chain.error.empty()) chain.elems.clear();
  return chain;
}

bool SplitQueue::push_used(const GuestMemory& mem, uint16_t head, uint32_t len) {
  if (!add_used(mem, head, len)) return false;
  publish_used(mem);
  return true;
}

bool SplitQueue::add_used(const GuestMemory& mem, uint16_t head, uint32_t len) {
  if (!mem.contains(used_addr, 6 + uint64_t{8} * size) || size == 0) return false;
  uint64_t slot = used_addr + 4 + 8 * uint64_t(used_idx_ % size);
  mem.store<uint32_t>(slot, head);
  mem.store<uint32_t>(slot + 4, len);
  ++used_idx_;
  return true;
}

void SplitQueue::publish_used(const GuestMemory& mem) {
  if (!mem.contains(used_addr, 6 + uint64_t{8} * size) || size == 0) return;
  auto* idx = reinterpret_cast<uint16_t*>(mem.ptr(used_addr + 2, 2));
  __atomic_store_n(idx, used_idx_, __ATOMIC_RELEASE);
}

}  // namespace img2vm::vm
