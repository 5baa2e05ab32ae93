// virtio-net (virtio 1.x, section 5.1) on the virtio-mmio transport, and the interface between
// the device and a network backend (user-mode networking through libslirp: net_slirp.hpp).
//
// Queues: 0 = receiveq1 (the guest posts empty buffers, the device fills them with frames),
// 1 = transmitq1 (the guest posts frames). Every frame on either queue is preceded by the
// 12-byte virtio 1.x `virtio_net_hdr` (flags, gso_type, hdr_len, gso_size, csum_start,
// csum_offset, num_buffers).
//
// Features offered: VERSION_1, MAC (config: the MAC address), MTU (config: the MTU the guest
// driver adopts as its own), STATUS (config: link up), MRG_RXBUF (a received frame may span
// several receive buffers; num_buffers says how many) and, when the backend's frames carry
// correct checksums, GUEST_CSUM (the device marks received frames DATA_VALID so that the guest
// skips verifying them). With a backend that takes offloads (NetBackend::offloads(): tap with a
// vnet header) the device also offers CSUM, GUEST_CSUM, HOST_TSO4/6 and GUEST_TSO4/6 and passes
// the virtio_net_hdr through in both directions (partial checksums and segments of up to 64 KiB
// are the host kernel's to finish); otherwise (libslirp, which cannot take partial checksums) the
// guest sends fully checksummed, unsegmented frames of at most MTU + 18 bytes.
//
// Everything the guest supplies is checked (virtqueue.hpp for chains; here: buffer directions,
// header fields, frame sizes). A malformed transmit chain is returned unused; a frame shorter
// than an Ethernet header or longer than the MTU allows is dropped; a malformed receive chain is
// returned with length 0. Nothing the guest does can crash the device or make it touch memory
// outside guest RAM.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <vector>

#include "img2vm/vm/net_backend.hpp"
#include "img2vm/vm/port_forward.hpp"
#include "virtio_mmio.hpp"

namespace img2vm::vm {

struct VirtioNetStats {
  uint64_t tx_frames = 0, tx_dropped = 0;  // from the guest: sent to the backend / dropped
  uint64_t rx_frames = 0, rx_dropped = 0;  // to the guest: delivered / dropped
  uint64_t bad_chains = 0;                 // malformed descriptor chains returned unused
};

class VirtioNet final : public VirtioDevice, public NetDeviceSide {
 public:
  static constexpr uint64_t kFeatureCsum = 1ull << 0, kFeatureGuestCsum = 1ull << 1,
                            kFeatureMtu = 1ull << 3, kFeatureMac = 1ull << 5,
                            kFeatureGuestTso4 = 1ull << 7, kFeatureGuestTso6 = 1ull << 8,
                            kFeatureHostTso4 = 1ull << 11, kFeatureHostTso6 = 1ull << 12,
                            kFeatureMrgRxbuf = 1ull << 15, kFeatureStatus = 1ull << 16;
  static constexpr uint8_t kHdrFNeedsCsum = 1, kHdrFDataValid = 2;
  static constexpr uint8_t kGsoNone = 0, kGsoTcpV4 = 1, kGsoTcpV6 = 4;
  static constexpr size_t kMaxGsoFrame =
      65535 + 14;  // one IP packet of 64 KiB with its Ethernet header
  static constexpr uint16_t kStatusLinkUp = 1;
  static constexpr size_t kHdrSize = 12;    // struct virtio_net_hdr with num_buffers (virtio 1.x)
  static constexpr size_t kEthHeader = 14;  // the smallest frame accepted
  static constexpr size_t kFrameOverhead = 18;  // Ethernet header + one VLAN tag on top of the MTU
  static constexpr uint16_t kMinMtu = 68, kMaxMtu = 65520;
  static constexpr unsigned kRxQueue = 0, kTxQueue = 1;
  // Frames held for the guest (it has not posted buffers yet) before receive() drops: at most
  // this many, and at most this many bytes.
  static constexpr size_t kMaxPendingFrames = 256, kMaxPendingBytes = 4u << 20;

  // `backend` must outlive the device; the device attaches itself to it. Throws Error for an
  // MTU outside [kMinMtu, kMaxMtu].
  VirtioNet(NetBackend& backend, std::array<uint8_t, 6> mac, uint16_t mtu);
  ~VirtioNet() override;

  // How the device interrupts the guest for frames that arrived without a notification: the
  // owner sets this to call VirtioMmio::notify() (which runs process_queues and raises the IRQ).
  void set_kick(std::function<void()> kick) { kick_ = std::move(kick); }

  uint32_t device_id() const override { return 1; }
  uint64_t features() const override;
  unsigned num_queues() const override { return 2; }
  std::span<const uint8_t> config() const override { return config_; }
  bool process(const GuestMemory& mem, SplitQueue& queue) override;  // not used: see process_queues
  bool process_queues(const GuestMemory& mem, std::span<SplitQueue> queues,
                      uint64_t features) override;
  void reset() override;

  // Snapshots: besides the transport's queues, what the driver was told: the MTU (which it
  // adopted) and the MAC. A restore must offer the same MTU (Error kUnsupported otherwise); it
  // may have another MAC, which the driver does not read again (the guest init sets the run's
  // MAC itself: NetConfig::mac). Frames held for the guest are not saved: the network dropped
  // them, as it may.
  struct State {
    uint8_t mac[6] = {};
    uint16_t mtu = 0;
    uint32_t reserved[2] = {};
  };
  bool snapshot_supported() const override { return true; }
  std::vector<uint8_t> save_state() const override;
  void load_state(std::span<const uint8_t> state) override;

  bool receive(std::span<const uint8_t> frame) override;
  bool rx_full() const override;
  void flush_rx() override;

  uint16_t mtu() const noexcept { return mtu_; }
  size_t max_frame() const noexcept { return size_t(mtu_) + kFrameOverhead; }
  // The largest frame (without the header) either way: max_frame(), or a GSO frame with offloads.
  size_t max_any_frame() const noexcept {
    return offloads_ ? std::max(max_frame(), kMaxGsoFrame) : max_frame();
  }
  VirtioNetStats stats() const;

 private:
  bool transmit(const GuestMemory& mem, SplitQueue& q, uint64_t features);
  bool deliver(const GuestMemory& mem, SplitQueue& q, uint64_t features);
  // One frame into the receive queue: true if done (delivered or dropped), false if the guest
  // must first post more buffers.
  bool deliver_one(const GuestMemory& mem, SplitQueue& q, std::span<const uint8_t> frame,
                   bool mergeable, bool data_valid, bool& used);

  // Whether the header a frame arrived with (guest or backend) fits what was negotiated.
  bool header_ok(std::span<const uint8_t> hdr_and_frame, bool csum, bool tso4, bool tso6) const;

  NetBackend& backend_;
  uint16_t mtu_;
  bool checksums_valid_;
  bool offloads_;
  std::atomic<uint64_t> told_features_{~0ull};  // the driver features last passed to the backend
  std::array<uint8_t, 12>
      config_{};  // mac[6], status (le16), max_virtqueue_pairs (le16), mtu (le16)
  std::function<void()> kick_;
  std::vector<uint8_t> tx_buf_;  // one transmit chain gathered: header + frame
  std::vector<DescChain> rx_chains_;

  mutable std::mutex pending_mu_;
  std::deque<std::vector<uint8_t>> pending_;  // frames for the guest, oldest first
  size_t pending_bytes_ = 0;
  mutable bool backend_waiting_ = false;  // rx_full() was reported: tell the backend when not

  std::atomic<uint64_t> tx_frames_{0}, tx_dropped_{0}, rx_frames_{0}, rx_dropped_{0},
      bad_chains_{0};
};

}  // namespace img2vm::vm
