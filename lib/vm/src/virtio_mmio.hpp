// The virtio-mmio transport (virtio 1.x, section 4.2, version 2 registers) around one device.
// Register accesses come from a vCPU thread, queue processing from the I/O thread; one mutex
// serialises them. The guest learns of the device from the kernel command line
// (`virtio_mmio.device=4K@0xd0000000:5`).
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "guest_memory.hpp"
#include "virtqueue.hpp"

namespace img2vm::vm {

inline constexpr uint64_t kVirtioFVersion1 = 1ull << 32;

// What a concrete device (block, ...) provides to the transport.
class VirtioDevice {
 public:
  virtual ~VirtioDevice() = default;
  virtual uint32_t device_id() const = 0;
  virtual uint64_t features() const = 0;  // offered, including kVirtioFVersion1
  virtual unsigned num_queues() const = 0;
  virtual std::span<const uint8_t> config() const = 0;
  // Handles every available chain of `queue`; returns true if any was used (interrupt).
  virtual bool process(const GuestMemory& mem, SplitQueue& queue) = 0;
  // Called by the transport on a notification, with all queues (ready or not) and the
  // negotiated features. The default runs process() on each ready queue in order; devices
  // whose queues play different roles (virtio-net: receive, transmit) override it.
  virtual bool process_queues(const GuestMemory& mem, std::span<SplitQueue> queues,
                              uint64_t features) {
    (void)features;
    bool used = false;
    for (auto& q : queues)
      if (q.ready) used |= process(mem, q);
    return used;
  }
  // The driver reset the device (status 0): drop any state kept for it.
  virtual void reset() {}
  // The driver set DRIVER_OK: features are negotiated and the ready queues validated (in guest
  // memory, sizes powers of two). A device whose queues are served by another process
  // (vhost-user) hands them over here. Returns empty, or why the device cannot run (the
  // transport then sets DEVICE_NEEDS_RESET).
  virtual std::string activate(const GuestMemory& mem, std::span<SplitQueue> queues,
                               uint64_t features) {
    (void)mem, (void)queues, (void)features;
    return {};
  }
  // True when someone else (a vhost-user backend through the irqfd) raises the device's
  // used-buffer interrupts: InterruptStatus then always shows the used-buffer bit, since the
  // transport never sees those interrupts (the guest's driver checks the rings; a spurious
  // interrupt finds nothing new).
  virtual bool external_interrupts() const { return false; }

  // Snapshots (docs/snapshots.md). Whether this device's state can be saved at all (a device
  // with host-side state, such as connections or a backend process, needs more than its
  // queues); its own state beside the transport's (Section::kVirtioDevice), and the load of
  // it, which throws Error when this device cannot take that state.
  virtual bool snapshot_supported() const { return false; }
  virtual std::vector<uint8_t> save_state() const { return {}; }
  virtual void load_state(std::span<const uint8_t> state);
};

// A device's own state in a snapshot as the bytes of its (trivially copyable) State structure,
// and back: Error(kIntegrity) "<what> state: N bytes, not M" for a state of another size.
[[noreturn]] void throw_state_size(const char* what, size_t got, size_t want);
template <typename State>
std::vector<uint8_t> device_state_bytes(const State& st) {
  static_assert(std::is_trivially_copyable_v<State>);
  auto p = reinterpret_cast<const uint8_t*>(&st);
  return {p, p + sizeof st};
}
template <typename State>
State device_state_from(std::span<const uint8_t> state, const char* what) {
  static_assert(std::is_trivially_copyable_v<State>);
  if (state.size() != sizeof(State)) throw_state_size(what, state.size(), sizeof(State));
  State st;
  std::memcpy(&st, state.data(), sizeof st);
  return st;
}

// A transport's state in a snapshot (Section::kVirtioMmio): this, then one VirtioQueueState
// per queue.
struct VirtioMmioState {
  uint32_t device_id = 0, num_queues = 0;
  uint64_t device_features = 0;  // what the device offered
  uint64_t driver_features = 0;
  uint32_t status = 0, dev_features_sel = 0, drv_features_sel = 0, queue_sel = 0;
  uint32_t interrupt_status = 0, config_generation = 0;
  char broken[120] = {};  // why the device needs a reset, NUL-terminated
};
static_assert(sizeof(VirtioMmioState) == 168);

struct VirtioQueueState {
  uint64_t desc_addr = 0, avail_addr = 0, used_addr = 0;
  uint16_t size = 0, last_avail = 0, used_idx = 0;
  uint8_t ready = 0, broken = 0;
};
static_assert(sizeof(VirtioQueueState) == 32);

class VirtioMmio {
 public:
  static constexpr uint32_t kMagic = 0x74726976;  // "virt"
  static constexpr uint32_t kStatusDriverOk = 4, kStatusFeaturesOk = 8, kStatusNeedsReset = 0x40,
                            kStatusFailed = 0x80;
  static constexpr uint64_t kNotifyOffset = 0x50;

  // `interrupt` raises the device's interrupt line (an irqfd write, or a test's counter).
  VirtioMmio(const GuestMemory& mem, VirtioDevice& dev, std::function<void()> interrupt);

  // 32-bit register accesses below 0x100, any size in the config space at 0x100; others read
  // as 0 and are ignored when written.
  void read(uint64_t offset, uint8_t* data, unsigned size);
  void write(uint64_t offset, const uint8_t* data, unsigned size);
  // Called on a queue notification (from the ioeventfd or a QueueNotify write).
  void notify();

  uint32_t status() const;
  std::string broken_reason() const;

  // Snapshots. finish_pending() handles every chain the guest has made available, as a
  // notification would: once it returns, with the vCPUs stopped, no work is pending in the
  // device and guest memory agrees with save(). save() returns VirtioMmioState and the
  // queues; load() takes them into a transport that has not run yet, after checking them
  // against this device and guest memory (Error: kUnsupported for another device, kIntegrity
  // for impossible values; nothing changes then). raise_pending() raises the interrupt again
  // when the loaded state shows one the guest has not acknowledged: it may not have reached
  // the interrupt controller before that was saved.
  void finish_pending() { notify(); }
  std::vector<uint8_t> save() const;
  void load(std::span<const uint8_t> state);
  void raise_pending();
  // For a device another thread serves at any time (a NIC's backend delivers frames whenever
  // they come): hold() waits for any handling in progress and makes notify() do nothing until
  // release(), so that guest memory and the queues stay as they are while a snapshot is
  // written. What arrives meanwhile waits (chains in the rings, frames in the device) for the
  // first notify() after release().
  void hold();
  void release();

 private:
  void reset_locked();
  void process_locked();
  SplitQueue* selected_locked();

  const GuestMemory& mem_;
  VirtioDevice& dev_;
  std::function<void()> interrupt_;
  mutable std::mutex mu_;
  std::vector<SplitQueue> queues_;
  uint32_t status_ = 0, queue_sel_ = 0, dev_features_sel_ = 0, drv_features_sel_ = 0;
  uint32_t interrupt_status_ = 0, config_generation_ = 0;
  uint64_t driver_features_ = 0;
  std::string broken_;
  bool held_ = false;
};

}  // namespace img2vm::vm
