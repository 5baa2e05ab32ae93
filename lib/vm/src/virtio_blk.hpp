// virtio-blk (virtio 1.x, section 5.2) over a DiskView (disk_view.hpp): read, write, flush and
// get-id requests, each checked against the disk size and guest memory before any I/O. Requests use
// the framing every Linux driver uses: a 16-byte header in the first (device-readable) descriptor,
// the data in the following ones, and the status byte as the last byte of the last
// (device-writable) descriptor. Anything else completes with VIRTIO_BLK_S_IOERR or _UNSUPP, never a
// crash.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "img2vm/vm/disk_view.hpp"
#include "virtio_mmio.hpp"

namespace img2vm::vm {

class VirtioBlk final : public VirtioDevice {
 public:
  static constexpr uint32_t kTypeIn = 0, kTypeOut = 1, kTypeFlush = 4, kTypeGetId = 8;
  static constexpr uint8_t kStatusOk = 0, kStatusIoErr = 1, kStatusUnsupp = 2;
  static constexpr uint64_t kFeatureRo = 1ull << 5, kFeatureFlush = 1ull << 9,
                            kFeatureSegMax = 1ull << 2;
  static constexpr uint64_t kSectorSize = 512;

  // Serves `view`; the capacity is its size rounded down to sectors.
  VirtioBlk(std::unique_ptr<DiskView> view, std::string id);

  uint32_t device_id() const override { return 2; }
  uint64_t features() const override;
  unsigned num_queues() const override { return 1; }
  std::span<const uint8_t> config() const override { return config_; }
  bool process(const GuestMemory& mem, SplitQueue& queue) override;

  // Requests complete before process() returns: besides the transport's queues the state is
  // only what the guest was told, the capacity and read-only flag, which a restore must
  // match (Error kUnsupported otherwise).
  struct State {
    uint64_t capacity_sectors = 0;
    uint32_t read_only = 0;
    uint32_t reserved = 0;
  };
  bool snapshot_supported() const override { return true; }
  std::vector<uint8_t> save_state() const override;
  void load_state(std::span<const uint8_t> state) override;

  // One request: performs it and returns the number of bytes written into guest buffers.
  uint32_t handle(const GuestMemory& mem, const DescChain& chain);

  uint64_t capacity_sectors() const noexcept { return size_ / kSectorSize; }
  bool read_only() const noexcept { return read_only_; }
  const DiskView& view() const noexcept { return *view_; }
  DiskView& view() noexcept { return *view_; }

 private:
  uint8_t do_request(const GuestMemory& mem, const DescChain& chain, uint32_t& written);

  std::unique_ptr<DiskView> view_;
  uint64_t size_ = 0;
  bool read_only_ = false;
  std::string id_;
  std::array<uint8_t, 24> config_{};  // capacity (le64), size_max (le32), seg_max (le32), ...
};

}  // namespace img2vm::vm
