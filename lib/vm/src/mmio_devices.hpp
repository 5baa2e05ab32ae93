// Where the virtio-mmio devices sit in the guest: the i-th device attached (disks in order, then
// the NIC) gets the 4 KiB at layout::kMmioBase + i * layout::kMmioStride and IOAPIC pin
// layout::kMmioFirstIrq + i, and the guest kernel learns of it from the command line entry
// `virtio_mmio.device=4K@0x<base>:<irq>`. No KVM here: the runner adds the ioeventfd and irqfd.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bus.hpp"
#include "virtio_mmio.hpp"

namespace img2vm::vm {

struct MmioSlot {
  uint64_t base = 0;
  unsigned irq = 0;
};

// The kernel command line entry announcing a device in `slot`.
std::string virtio_mmio_kernel_arg(const MmioSlot& slot);

class MmioDeviceManager {
 public:
  // The last IOAPIC pin (the MP table routes ISA IRQs 0-23).
  static constexpr unsigned kLastIrq = 23;

  explicit MmioDeviceManager(Bus& mmio) : bus_(mmio) {}

  // Puts `transport` in the next slot: routes the slot's accesses on the MMIO bus to it and
  // records its command line entry. Throws Error(kLimit) when no IRQ is left. `transport` must
  // outlive the bus.
  MmioSlot attach(std::string name, VirtioMmio& transport);
  // The command line entries of the devices, in the order attached.
  const std::vector<std::string>& kernel_args() const noexcept { return args_; }
  // `cmdline` with those entries appended, space-separated.
  std::string command_line(std::string cmdline) const;

 private:
  Bus& bus_;
  std::vector<std::string> args_;
};

}  // namespace img2vm::vm
