// Split virtqueues (virtio 1.x, section 2.7) over guest memory. Everything the guest wrote is
// read once into local copies and checked before use: ring addresses and alignment, descriptor
// indices, chain length (a loop cannot run longer than the queue size), every buffer inside
// guest memory, no indirect descriptors (not offered).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "guest_memory.hpp"

namespace img2vm::vm {

struct DescElem {
  uint64_t addr;
  uint32_t len;
  bool device_writable;
};

struct DescChain {
  uint16_t head = 0;
  std::vector<DescElem> elems;
  std::string error;  // non-empty: the chain is malformed (why); return it unused
};

class SplitQueue {
 public:
  static constexpr uint16_t kMaxSize = 256;
  static constexpr uint16_t kDescNext = 1, kDescWrite = 2, kDescIndirect = 4;

  // Guest-programmed configuration (through the transport's registers).
  uint16_t size = kMaxSize;
  bool ready = false;
  uint64_t desc_addr = 0, avail_addr = 0, used_addr = 0;

  void reset() { *this = SplitQueue(); }
  // Checks the configuration against guest memory; empty when usable, else why not.
  std::string validate(const GuestMemory& mem) const;
  // The next available chain, or nullopt when there is none. Sets `broken` (and returns
  // nullopt) when the avail ring itself is inconsistent; the queue must then be reset.
  std::optional<DescChain> pop(const GuestMemory& mem);
  // Returns a chain to the guest with `len` bytes written into its buffers.
  bool push_used(const GuestMemory& mem, uint16_t head, uint32_t len);
  // As push_used, but the guest sees the entries only at publish_used(): a device that
  // returns several chains as one unit (virtio-net's mergeable receive buffers) makes them
  // visible together.
  bool add_used(const GuestMemory& mem, uint16_t head, uint32_t len);
  void publish_used(const GuestMemory& mem);
  // Gives back the last `n` chains pop() returned and that were not used: they are popped
  // (and checked) again next time. A device that ran out of buffers mid-packet uses this.
  void undo_pop(uint16_t n) noexcept { last_avail_ = uint16_t(last_avail_ - n); }

  bool broken() const noexcept { return broken_; }
  const std::string& broken_reason() const noexcept { return broken_reason_; }
  uint16_t last_avail() const noexcept { return last_avail_; }
  uint16_t used_idx() const noexcept { return used_idx_; }
  // A snapshot's indices and broken state (the transport checks the configuration with
  // validate() first).
  void restore(uint16_t last_avail, uint16_t used_idx, bool broken, std::string reason) {
    last_avail_ = last_avail;
    used_idx_ = used_idx;
    broken_ = broken;
    broken_reason_ = broken ? std::move(reason) : std::string();
  }

 private:
  uint16_t last_avail_ = 0;
  uint16_t used_idx_ = 0;
  bool broken_ = false;
  std::string broken_reason_;
};

}  // namespace img2vm::vm
