// virtio-fs (virtio 1.x, section 5.11) as a vhost-user device: the queues (one high-priority
// queue, then the request queues) are served by a vhost-user backend (virtiofsd) that maps guest
// RAM itself; the VMM only negotiates features, shows the config space (tag, number of request
// queues) and, when the driver sets DRIVER_OK, hands the backend each ready queue: its size, its
// ring addresses (translated to the VMM's addresses, as SET_MEM_TABLE announced guest RAM), a
// kick eventfd (the queue's ioeventfd) and the call eventfd (the device's irqfd). A reset stops
// the rings (GET_VRING_BASE). Guest RAM must be shared (GuestMemory::Sharing::kShared).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "img2vm/base/fd.hpp"
#include "vhost_user.hpp"
#include "virtio_mmio.hpp"

namespace img2vm::vm {

class VirtioFs final : public VirtioDevice {
 public:
  static constexpr uint32_t kDeviceId = 26;
  static constexpr size_t kTagSize = 36;
  static constexpr uint64_t kFeatureIndirectDesc = 1ull << 28, kFeatureEventIdx = 1ull << 29;

  // Runs the handshake with the backend (SET_OWNER, features) and throws Error when it fails or
  // the backend lacks VIRTIO_F_VERSION_1. `tag` is what the guest mounts (1-36 bytes, no NUL).
  VirtioFs(VhostUserFrontend backend, std::string tag, unsigned request_queues = 1);

  uint32_t device_id() const override { return kDeviceId; }
  uint64_t features() const override { return features_; }
  unsigned num_queues() const override { return unsigned(kicks_.size()); }
  std::span<const uint8_t> config() const override { return config_; }
  bool process(const GuestMemory& mem, SplitQueue& queue) override;
  bool process_queues(const GuestMemory& mem, std::span<SplitQueue> queues,
                      uint64_t features) override;
  std::string activate(const GuestMemory& mem, std::span<SplitQueue> queues,
                       uint64_t features) override;
  void reset() override;
  bool external_interrupts() const override { return true; }

  // Queue `i`'s kick eventfd: the runner registers it as the ioeventfd of QueueNotify writes of
  // value i (KVM's datamatch), the backend waits on it.
  int kick_fd(unsigned i) const { return kicks_.at(i).get(); }
  // The eventfd the backend signals for used buffers (the irqfd); not owned. Set before use.
  void set_call_fd(int fd) noexcept { call_fd_ = fd; }
  const std::string& tag() const noexcept { return tag_; }
  const VhostUserFrontend& backend() const noexcept { return backend_; }
  // Why the last reset could not stop the backend's rings (empty when it could).
  const std::string& reset_error() const noexcept { return reset_error_; }

 private:
  VhostUserFrontend backend_;
  std::string tag_;
  uint64_t features_ = 0;
  std::vector<UniqueFd> kicks_;
  std::vector<bool> started_;
  int call_fd_ = -1;
  std::array<uint8_t, kTagSize + 4> config_{};
  std::string reset_error_;
};

}  // namespace img2vm::vm
