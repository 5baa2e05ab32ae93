// An address bus of the machine: the I/O ports, or the MMIO space. Devices claim disjoint
// ranges [base, base + len); an access goes to the device whose range holds its first byte, with
// its offset in that range and its size (the device decides what an access of another size, or
// one that runs past its end, does). Nothing claims an address: reads return `unclaimed` in
// every byte and writes are ignored, as on a floating bus.
// Built before the vCPUs start and only read afterwards, so lookups need no lock.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace img2vm::vm {

class Bus {
 public:
  // `offset` is from the range's base; `data` holds `size` bytes (read: to fill in).
  using Handler = std::function<void(uint64_t offset, bool write, uint8_t* data, unsigned size)>;
  struct Range {
    uint64_t base = 0, len = 0;
    std::string name;  // for messages
    Handler handler;
  };

  Bus(std::string name, uint8_t unclaimed) : name_(std::move(name)), unclaimed_(unclaimed) {}

  // Claims [base, base + len) for `name`. Throws Error(kInternal) naming both devices when the
  // range overlaps one already claimed, and when it is empty or wraps around.
  void add(uint64_t base, uint64_t len, std::string name, Handler handler);
  // The range holding `addr`, or nullptr.
  const Range* find(uint64_t addr) const;
  // One access: to the device at `addr`, or the floating bus.
  void access(uint64_t addr, bool write, uint8_t* data, unsigned size) const;
  // What nothing answers: reads `unclaimed` in every byte, writes go nowhere. Devices use it
  // for accesses they do not decode.
  void unclaimed(bool write, uint8_t* data, unsigned size) const;

  const std::vector<Range>& ranges() const noexcept { return ranges_; }  // sorted by base

 private:
  std::string name_;
  uint8_t unclaimed_;
  std::vector<Range> ranges_;
};

}  // namespace img2vm::vm
