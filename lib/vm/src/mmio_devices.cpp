#include "mmio_devices.hpp"

#include <cstdio>

#include "boot.hpp"
#include "img2vm/base/error.hpp"

namespace img2vm::vm {

std::string virtio_mmio_kernel_arg(const MmioSlot& slot) {
  char arg[96];
  std::snprintf(arg, sizeof arg, "virtio_mmio.device=4K@0x%llx:%u",
                static_cast<unsigned long long>(slot.base), slot.irq);
  return arg;
}

std::string MmioDeviceManager::command_line(std::string cmdline) const {
  for (const auto& arg : args_) {
    cmdline += cmdline.empty() ? "" : " ";
    cmdline += arg;
  }
  return cmdline;
}

MmioSlot MmioDeviceManager::attach(std::string name, VirtioMmio& transport) {
  const size_t i = args_.size();
  if (layout::kMmioFirstIrq + i > kLastIrq)
    throw Error(ErrorKind::kLimit, "no interrupt line left for " + name);
  const MmioSlot slot{layout::kMmioBase + i * layout::kMmioStride,
                      layout::kMmioFirstIrq + unsigned(i)};
  VirtioMmio* t = &transport;
  bus_.add(slot.base, layout::kMmioStride, std::move(name),
           [t](uint64_t offset, bool write, uint8_t* data, unsigned size) {
             if (write)
               t->write(offset, data, size);
             else
               t->read(offset, data, size);
           });
  args_.push_back(virtio_mmio_kernel_arg(slot));
  return slot;
}

}  // namespace img2vm::vm
