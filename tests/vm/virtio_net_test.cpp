// virtio-net against synthetic guest memory, driven through the virtio-mmio registers as a
// guest driver would: feature negotiation and config space, transmit of frames split over
// descriptors, mergeable and single-chain receive, waiting for buffers, malicious chains, a
// broken queue and a reset. The backend is a fake that records what it is given.
#include "virtio_net.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/vm/net_tap.hpp"
#include "virtio_mmio.hpp"

using namespace img2vm;
using namespace img2vm::vm;

namespace {

using Bytes = std::vector<uint8_t>;

struct FakeBackend final : NetBackend {
  explicit FakeBackend(bool checksums, bool offloading = false)
      : checksums_valid(checksums), offload(offloading) {}
  NetDeviceSide* device = nullptr;
  std::vector<Bytes> sent;
  int ready_calls = 0;
  bool checksums_valid, offload;
  std::vector<std::array<bool, 3>> guest_offloads;  // each set_guest_offloads call
  std::function<void(std::span<const uint8_t>)> on_send;

  void attach(NetDeviceSide* d) override { device = d; }
  void send(std::span<const uint8_t> f) override {
    sent.emplace_back(f.begin(), f.end());
    if (on_send) on_send(f);
  }
  void rx_ready() override { ++ready_calls; }
  bool rx_checksums_valid() const override { return checksums_valid; }
  bool offloads() const override { return offload; }
  void set_guest_offloads(bool csum, bool tso4, bool tso6) override {
    guest_offloads.push_back({csum, tso4, tso6});
  }
  void run(std::span<const Watch>) override {}
};

constexpr uint64_t kDescBase[2] = {0x1000, 0x4000}, kAvailBase[2] = {0x2000, 0x5000},
                   kUsedBase[2] = {0x3000, 0x6000};
constexpr uint64_t kBufs = 0x10000;  // buffers from here on
constexpr std::array<uint8_t, 6> kMac = {0x52, 0x54, 0x00, 0xab, 0xcd, 0xef};
constexpr uint64_t kDefaultFeatures = kVirtioFVersion1 | VirtioNet::kFeatureMac |
                                      VirtioNet::kFeatureMrgRxbuf | VirtioNet::kFeatureGuestCsum |
                                      VirtioNet::kFeatureMtu | VirtioNet::kFeatureStatus;

// A virtio_net_hdr: flags, gso_type, hdr_len (0), gso_size, csum_start, csum_offset, num_buffers.
Bytes vnet_hdr(uint8_t flags, uint8_t gso, uint16_t gso_size = 0, uint16_t csum_start = 0,
               uint16_t csum_offset = 0, uint16_t num_buffers = 0) {
  return {flags,
          gso,
          0,
          0,
          uint8_t(gso_size),
          uint8_t(gso_size >> 8),
          uint8_t(csum_start),
          uint8_t(csum_start >> 8),
          uint8_t(csum_offset),
          uint8_t(csum_offset >> 8),
          uint8_t(num_buffers),
          uint8_t(num_buffers >> 8)};
}

Bytes frame_of(size_t n, uint8_t seed) {
  Bytes f(n);
  for (size_t i = 0; i < n; ++i) f[i] = uint8_t(seed + i * 7);
  return f;
}

struct NetRig {
  GuestMemory mem{1u << 20};
  FakeBackend backend;
  VirtioNet net;
  VirtioMmio mmio;
  int interrupts = 0;
  uint16_t qsize;
  uint16_t avail_idx[2] = {0, 0};

  explicit NetRig(uint64_t features = kDefaultFeatures, uint16_t queue_size = 8,
                  bool checksums = true, uint16_t mtu = 1500, bool offloads = false)
      : backend(checksums, offloads),
        net(backend, kMac, mtu),
        mmio(mem, net, [this] { ++interrupts; }),
        qsize(queue_size) {
    net.set_kick([this] { mmio.notify(); });
    setup(features);
  }

  void wr(uint64_t off, uint32_t v) { mmio.write(off, reinterpret_cast<const uint8_t*>(&v), 4); }
  uint32_t rd(uint64_t off) {
    uint32_t v = 0;
    mmio.read(off, reinterpret_cast<uint8_t*>(&v), 4);
    return v;
  }
  void setup(uint64_t features) {
    wr(0x070, 0);
    avail_idx[0] = avail_idx[1] = 0;
    std::memset(mem.host_base(), 0, kBufs);
    wr(0x070, 3);
    wr(0x024, 0);
    wr(0x020, uint32_t(features));
    wr(0x024, 1);
    wr(0x020, uint32_t(features >> 32));
    wr(0x070, 11);
    ASSERT_TRUE(rd(0x070) & 8) << "features refused";
    for (uint32_t q = 0; q < 2; ++q) {
      wr(0x030, q);
      wr(0x038, qsize);
      wr(0x080, uint32_t(kDescBase[q]));
      wr(0x084, 0);
      wr(0x090, uint32_t(kAvailBase[q]));
      wr(0x094, 0);
      wr(0x0a0, uint32_t(kUsedBase[q]));
      wr(0x0a4, 0);
      wr(0x044, 1);
    }
    wr(0x070, 15);
  }
  void desc(unsigned q, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags,
            uint16_t next = 0) {
    uint64_t d = kDescBase[q] + 16 * uint64_t(i);
    mem.store<uint64_t>(d, addr);
    mem.store<uint32_t>(d + 8, len);
    mem.store<uint16_t>(d + 12, flags);
    mem.store<uint16_t>(d + 14, next);
  }
  void post(unsigned q, uint16_t head) {
    mem.store<uint16_t>(kAvailBase[q] + 4 + 2 * (avail_idx[q] % qsize), head);
    mem.store<uint16_t>(kAvailBase[q] + 2, ++avail_idx[q]);
  }
  void notify() { wr(0x050, 0); }
  uint16_t used_idx(unsigned q) { return *mem.load<uint16_t>(kUsedBase[q] + 2); }
  std::pair<uint32_t, uint32_t> used(unsigned q, uint16_t i) {
    uint64_t e = kUsedBase[q] + 4 + 8 * uint64_t(i % qsize);
    return {*mem.load<uint32_t>(e), *mem.load<uint32_t>(e + 4)};
  }
  // Posts a transmit chain: the 12-byte header (flags, gso_type) and `frame` split at `splits`.
  void transmit(const Bytes& frame, std::vector<size_t> splits = {}, uint8_t flags = 0,
                uint8_t gso = 0) {
    transmit_with(vnet_hdr(flags, gso), frame, std::move(splits));
  }
  void transmit_with(const Bytes& hdr, const Bytes& frame, std::vector<size_t> splits = {}) {
    Bytes all = hdr;
    all.insert(all.end(), frame.begin(), frame.end());
    mem.write(kBufs, all.data(), all.size());
    std::vector<size_t> cuts = {0};
    for (size_t s : splits) cuts.push_back(12 + s);
    cuts.push_back(all.size());
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      bool last = i + 2 == cuts.size();
      desc(VirtioNet::kTxQueue, uint16_t(i), kBufs + cuts[i], uint32_t(cuts[i + 1] - cuts[i]),
           last ? 0 : SplitQueue::kDescNext, uint16_t(i + 1));
    }
    post(VirtioNet::kTxQueue, 0);
    notify();
  }
  // Posts `n` single-descriptor receive buffers of `len` bytes (descriptors first..first+n-1).
  void post_rx(uint16_t first, uint16_t n, uint32_t len) {
    for (uint16_t i = first; i < first + n; ++i) {
      desc(VirtioNet::kRxQueue, i, rx_buf(i), len, SplitQueue::kDescWrite);
      post(VirtioNet::kRxQueue, i);
    }
  }
  static uint64_t rx_buf(uint16_t i) { return 0x40000 + uint64_t(i) * 0x1000; }
  Bytes read(uint64_t addr, size_t n) {
    Bytes b(n);
    mem.read(addr, b.data(), n);
    return b;
  }
};

}  // namespace

TEST(VirtioNet, OffersFeaturesAndConfig) {
  NetRig r;
  EXPECT_EQ(r.rd(0x008), 1u);  // device id: network
  r.wr(0x014, 0);
  uint32_t lo = r.rd(0x010);
  r.wr(0x014, 1);
  uint32_t hi = r.rd(0x010);
  uint64_t f = lo | (uint64_t(hi) << 32);
  EXPECT_EQ(f, kDefaultFeatures);
  EXPECT_FALSE(f & 1) << "CSUM must not be offered: libslirp cannot take partial checksums";
  uint8_t cfg[12];
  for (unsigned i = 0; i < 12; ++i) r.mmio.read(0x100 + i, cfg + i, 1);
  EXPECT_EQ(0, std::memcmp(cfg, kMac.data(), 6));
  EXPECT_EQ(cfg[6] | cfg[7] << 8, VirtioNet::kStatusLinkUp);
  EXPECT_EQ(cfg[10] | cfg[11] << 8, 1500);
  uint16_t mtu = 0;
  r.mmio.read(0x100 + 10, reinterpret_cast<uint8_t*>(&mtu), 2);
  EXPECT_EQ(mtu, 1500);

  NetRig plain(kVirtioFVersion1, 8, /*checksums=*/false);
  plain.wr(0x014, 0);
  EXPECT_FALSE(plain.rd(0x010) & VirtioNet::kFeatureGuestCsum)
      << "DATA_VALID only when the backend's checksums are right";
}

TEST(VirtioNet, MtuOutOfRangeIsRefused) {
  FakeBackend b(true);
  EXPECT_THROW(VirtioNet(b, kMac, 67), Error);
  EXPECT_THROW(VirtioNet(b, kMac, 65521), Error);
  VirtioNet ok(b, kMac, 9000);
  EXPECT_EQ(ok.max_frame(), 9018u);
  EXPECT_EQ(b.device, &ok);
}

TEST(VirtioNet, TransmitReachesTheBackendIntact) {
  NetRig r;
  Bytes f = frame_of(600, 3);
  r.transmit(f, {0, 14, 100});  // header alone, then the frame in three pieces
  ASSERT_EQ(r.backend.sent.size(), 1u);
  EXPECT_EQ(r.backend.sent[0], f);
  EXPECT_EQ(r.used_idx(VirtioNet::kTxQueue), 1);
  EXPECT_EQ(r.used(VirtioNet::kTxQueue, 0), std::make_pair(0u, 0u));
  EXPECT_EQ(r.interrupts, 1);

  Bytes g = frame_of(1514, 9);  // a full-size frame, header and data in one descriptor
  r.transmit(g);
  ASSERT_EQ(r.backend.sent.size(), 2u);
  EXPECT_EQ(r.backend.sent[1], g);
  EXPECT_EQ(r.net.stats().tx_frames, 2u);
}

TEST(VirtioNet, BadTransmitFramesAreDroppedAndReturned) {
  NetRig r;
  r.transmit(frame_of(13, 1));                                 // shorter than an Ethernet header
  r.transmit(frame_of(1500 + 18 + 1, 1));                      // longer than the MTU allows
  r.transmit(frame_of(60, 1), {}, VirtioNet::kHdrFNeedsCsum);  // partial checksum: not negotiated
  r.transmit(frame_of(60, 1), {}, 0, 1);                       // TSO: not negotiated
  EXPECT_TRUE(r.backend.sent.empty());
  EXPECT_EQ(r.used_idx(VirtioNet::kTxQueue), 4);
  EXPECT_EQ(r.net.stats().tx_dropped, 4u);

  // A device-writable descriptor in a transmit chain.
  r.mem.write(kBufs, frame_of(72, 0).data(), 72);
  r.desc(1, 0, kBufs, 12, SplitQueue::kDescNext, 1);
  r.desc(1, 1, kBufs + 12, 60, SplitQueue::kDescWrite);
  r.post(1, 0);
  // A loop, a buffer outside memory, a huge wrapping length.
  r.desc(1, 2, kBufs, 40, SplitQueue::kDescNext, 3);
  r.desc(1, 3, kBufs, 40, SplitQueue::kDescNext, 2);
  r.post(1, 2);
  r.desc(1, 4, 0x7ffffffff000ull, 100, 0);
  r.post(1, 4);
  r.desc(1, 5, kBufs, 0xffffffffu, 0);
  r.post(1, 5);
  r.notify();
  EXPECT_TRUE(r.backend.sent.empty());
  EXPECT_EQ(r.used_idx(VirtioNet::kTxQueue), 8);
  EXPECT_EQ(r.net.stats().bad_chains, 4u);
  EXPECT_EQ(r.rd(0x070) & VirtioMmio::kStatusNeedsReset, 0u)
      << "malformed chains do not break the queue";

  r.transmit(frame_of(60, 5));  // and the queue still works
  ASSERT_EQ(r.backend.sent.size(), 1u);
  EXPECT_EQ(r.backend.sent[0], frame_of(60, 5));
}

TEST(VirtioNet, ReceiveFillsMergeableBuffers) {
  NetRig r;
  r.post_rx(0, 4, 256);
  r.notify();
  Bytes f = frame_of(600, 11);
  ASSERT_TRUE(r.net.receive(f));
  int before = r.interrupts;
  r.net.flush_rx();
  EXPECT_GT(r.interrupts, before);
  // 12 + 600 bytes over 256-byte buffers: three of them, the first two full.
  ASSERT_EQ(r.used_idx(VirtioNet::kRxQueue), 3);
  EXPECT_EQ(r.used(0, 0), std::make_pair(0u, 256u));
  EXPECT_EQ(r.used(0, 1), std::make_pair(1u, 256u));
  EXPECT_EQ(r.used(0, 2), std::make_pair(2u, 100u));
  Bytes hdr = r.read(NetRig::rx_buf(0), 12);
  EXPECT_EQ(hdr[0], VirtioNet::kHdrFDataValid);
  EXPECT_EQ(hdr[1], 0);
  EXPECT_EQ(hdr[10] | hdr[11] << 8, 3) << "num_buffers";
  Bytes got = r.read(NetRig::rx_buf(0) + 12, 244);
  Bytes b1 = r.read(NetRig::rx_buf(1), 256), b2 = r.read(NetRig::rx_buf(2), 100);
  got.insert(got.end(), b1.begin(), b1.end());
  got.insert(got.end(), b2.begin(), b2.end());
  EXPECT_EQ(got, f);

  // The fourth buffer takes the next small frame alone.
  Bytes small = frame_of(60, 1);
  ASSERT_TRUE(r.net.receive(small));
  r.net.flush_rx();
  ASSERT_EQ(r.used_idx(VirtioNet::kRxQueue), 4);
  EXPECT_EQ(r.used(0, 3), std::make_pair(3u, 72u));
  EXPECT_EQ(r.read(NetRig::rx_buf(3) + 12, 60), small);
  EXPECT_EQ(r.net.stats().rx_frames, 2u);
}

TEST(VirtioNet, ReceiveWaitsForEnoughBuffers) {
  NetRig r;
  Bytes f = frame_of(700, 4);
  ASSERT_TRUE(r.net.receive(f));
  r.net.flush_rx();  // no buffers yet
  EXPECT_EQ(r.used_idx(VirtioNet::kRxQueue), 0);
  r.post_rx(0, 2, 256);  // 512 bytes: not enough for 712
  r.notify();
  EXPECT_EQ(r.used_idx(VirtioNet::kRxQueue), 0) << "no partial frame may be published";
  r.post_rx(2, 1, 256);
  r.notify();
  ASSERT_EQ(r.used_idx(VirtioNet::kRxQueue), 3);
  EXPECT_EQ(r.used(0, 0).first, 0u);  // the buffers given back were used again, in order
  EXPECT_EQ(r.used(0, 2), std::make_pair(2u, 712u - 512u));
  EXPECT_EQ(r.net.stats().rx_dropped, 0u);
}

TEST(VirtioNet, TransmitAnsweredAtOnceIsDeliveredInTheSamePass) {
  NetRig r;
  r.post_rx(0, 2, 2048);
  r.notify();
  Bytes reply = frame_of(42, 77);
  r.backend.on_send = [&](std::span<const uint8_t>) {
    r.backend.device->receive(reply);
  };  // as slirp's ARP
  r.transmit(frame_of(42, 1));
  ASSERT_EQ(r.used_idx(VirtioNet::kRxQueue), 1);
  EXPECT_EQ(r.read(NetRig::rx_buf(0) + 12, 42), reply);
}

TEST(VirtioNet, ReceiveWithoutMergeableUsesOneChain) {
  NetRig r(kVirtioFVersion1 | VirtioNet::kFeatureMac);
  // A two-descriptor chain: header, then room for a full frame.
  r.desc(0, 0, NetRig::rx_buf(0), 12, SplitQueue::kDescWrite | SplitQueue::kDescNext, 1);
  r.desc(0, 1, NetRig::rx_buf(1), 1514, SplitQueue::kDescWrite);
  r.post(0, 0);
  // A chain too small for a full frame.
  r.desc(0, 2, NetRig::rx_buf(2), 200, SplitQueue::kDescWrite);
  r.post(0, 2);
  r.notify();
  Bytes big = frame_of(1000, 2), big2 = frame_of(1200, 3), small = frame_of(100, 4);
  ASSERT_TRUE(r.net.receive(big));
  ASSERT_TRUE(r.net.receive(big2));  // only the small chain is left: dropped, the chain kept
  ASSERT_TRUE(r.net.receive(small));
  r.net.flush_rx();
  ASSERT_EQ(r.used_idx(VirtioNet::kRxQueue), 2);
  EXPECT_EQ(r.used(0, 0), std::make_pair(0u, 1012u));
  Bytes hdr = r.read(NetRig::rx_buf(0), 12);
  EXPECT_EQ(hdr[0], 0) << "GUEST_CSUM not negotiated: flags stay 0";
  EXPECT_EQ(hdr[10] | hdr[11] << 8, 1) << "num_buffers is 1 without MRG_RXBUF";
  EXPECT_EQ(r.read(NetRig::rx_buf(1), 1000), big);
  EXPECT_EQ(r.used(0, 1), std::make_pair(2u, 112u));
  EXPECT_EQ(r.read(NetRig::rx_buf(2) + 12, 100), small);
  EXPECT_EQ(r.net.stats().rx_dropped, 1u);
}

TEST(VirtioNet, MaliciousReceiveChainsAreReturnedEmpty) {
  NetRig r;
  r.desc(0, 0, NetRig::rx_buf(0), 256, 0);  // device-readable: not a receive buffer
  r.post(0, 0);
  r.desc(0, 1, 0x7ffffffff000ull, 256, SplitQueue::kDescWrite);  // outside guest memory
  r.post(0, 1);
  r.desc(0, 2, NetRig::rx_buf(2), 8, SplitQueue::kDescWrite);  // smaller than the header
  r.post(0, 2);
  r.desc(0, 3, NetRig::rx_buf(3), 256, SplitQueue::kDescWrite | SplitQueue::kDescNext,
         3);  // a loop
  r.post(0, 3);
  r.post_rx(4, 1, 2048);  // and one good buffer
  r.notify();
  for (uint8_t i = 0; i < 5; ++i) ASSERT_TRUE(r.net.receive(frame_of(100, i)));
  r.net.flush_rx();
  ASSERT_EQ(r.used_idx(VirtioNet::kRxQueue), 5);
  for (uint16_t i = 0; i < 4; ++i) EXPECT_EQ(r.used(0, i), std::make_pair(uint32_t(i), 0u)) << i;
  EXPECT_EQ(r.used(0, 4), std::make_pair(4u, 112u));
  EXPECT_EQ(r.read(NetRig::rx_buf(4) + 12, 100), frame_of(100, 4));
  EXPECT_EQ(r.net.stats().bad_chains, 4u);
  EXPECT_EQ(r.rd(0x070) & VirtioMmio::kStatusNeedsReset, 0u);
}

TEST(VirtioNet, FramesTooSmallOrLargeForTheGuestAreDropped) {
  NetRig r;
  EXPECT_FALSE(r.net.receive(frame_of(13, 0)));
  EXPECT_FALSE(r.net.receive(frame_of(1500 + 18 + 1, 0)));
  EXPECT_TRUE(r.net.receive(frame_of(1500 + 18, 0)));
  EXPECT_EQ(r.net.stats().rx_dropped, 2u);
  // A frame no ring of tiny buffers can ever hold is dropped, not waited for forever.
  NetRig t(kDefaultFeatures, 4);
  t.post_rx(0, 4, 16);
  t.notify();
  ASSERT_TRUE(t.net.receive(frame_of(200, 0)));
  ASSERT_TRUE(t.net.receive(frame_of(20, 9)));
  t.net.flush_rx();
  EXPECT_EQ(t.net.stats().rx_dropped, 1u);
  ASSERT_EQ(t.used_idx(VirtioNet::kRxQueue), 2);  // the small one: 32 bytes over two buffers
  EXPECT_EQ(t.used(0, 0), std::make_pair(0u, 16u));
  EXPECT_EQ(t.used(0, 1), std::make_pair(1u, 16u));
}

TEST(VirtioNet, FullQueueTellsTheBackendWhenThereIsRoomAgain) {
  NetRig r(kDefaultFeatures, 256);
  size_t n = 0;
  while (r.net.receive(frame_of(100, uint8_t(n)))) ++n;
  EXPECT_EQ(n, VirtioNet::kMaxPendingFrames);
  EXPECT_TRUE(r.net.rx_full());
  EXPECT_EQ(r.backend.ready_calls, 0);
  for (uint16_t i = 0; i < 256; ++i) {
    r.desc(0, i, 0x40000 + uint64_t(i) * 256, 256, SplitQueue::kDescWrite);
    r.post(0, i);
  }
  r.notify();
  EXPECT_EQ(r.used_idx(VirtioNet::kRxQueue), 256);
  EXPECT_FALSE(r.net.rx_full());
  EXPECT_EQ(r.backend.ready_calls, 1);
  EXPECT_EQ(r.read(0x40000 + 255 * 256 + 12, 100), frame_of(100, 255));
}

TEST(VirtioNet, BrokenQueueNeedsResetAndResetRecovers) {
  NetRig r;
  ASSERT_TRUE(r.net.receive(frame_of(64, 1)));
  // The avail index runs far ahead of the queue: the ring is corrupt.
  r.mem.store<uint16_t>(kAvailBase[1] + 2, 100);
  r.notify();
  EXPECT_TRUE(r.rd(0x070) & VirtioMmio::kStatusNeedsReset);
  EXPECT_NE(r.mmio.broken_reason().find("ahead"), std::string::npos) << r.mmio.broken_reason();
  EXPECT_TRUE(r.rd(0x060) & 2) << "configuration-change interrupt";
  r.transmit(frame_of(60, 1));
  EXPECT_TRUE(r.backend.sent.empty()) << "a device needing reset does nothing";

  r.setup(kDefaultFeatures);  // the driver resets and starts again
  EXPECT_EQ(r.rd(0x070) & VirtioMmio::kStatusNeedsReset, 0u);
  r.post_rx(0, 1, 2048);
  r.notify();
  EXPECT_EQ(r.used_idx(VirtioNet::kRxQueue), 0) << "frames queued before the reset are gone";
  ASSERT_TRUE(r.net.receive(frame_of(64, 2)));
  r.net.flush_rx();
  ASSERT_EQ(r.used_idx(VirtioNet::kRxQueue), 1);
  EXPECT_EQ(r.read(NetRig::rx_buf(0) + 12, 64), frame_of(64, 2));
  r.transmit(frame_of(60, 3));
  ASSERT_EQ(r.backend.sent.size(), 1u);
}

TEST(VirtioNet, NothingMovesBeforeDriverOk) {
  NetRig r;
  r.wr(0x070, 0);  // reset, and stop before DRIVER_OK
  r.wr(0x070, 3);
  ASSERT_TRUE(r.net.receive(frame_of(64, 1)));
  r.net.flush_rx();
  r.notify();
  EXPECT_EQ(r.interrupts, 0);
  EXPECT_TRUE(r.backend.sent.empty());
}

// A backend with offloads (tap with a vnet header): the device offers CSUM and TSO both ways,
// passes the header through, tells the backend what the driver takes, and drops what was not
// negotiated.
TEST(VirtioNet, OffloadsPassTheHeaderThroughBothWays) {
  constexpr uint64_t kOffloadFeatures = kDefaultFeatures | VirtioNet::kFeatureCsum |
                                        VirtioNet::kFeatureHostTso4 | VirtioNet::kFeatureGuestTso4;
  NetRig r(kOffloadFeatures, 64, /*checksums=*/false, 1500, /*offloads=*/true);
  r.wr(0x014, 0);
  const uint32_t offered = r.rd(0x010);
  for (uint64_t f :
       {VirtioNet::kFeatureCsum, VirtioNet::kFeatureGuestCsum, VirtioNet::kFeatureHostTso4,
        VirtioNet::kFeatureHostTso6, VirtioNet::kFeatureGuestTso4, VirtioNet::kFeatureGuestTso6})
    EXPECT_TRUE(offered & f) << "feature bit " << __builtin_ctzll(f) << " not offered";

  // A 20000-byte TCP segment with a partial checksum goes out whole, header first.
  const Bytes seg = frame_of(20000, 4);
  const Bytes tso = vnet_hdr(VirtioNet::kHdrFNeedsCsum, VirtioNet::kGsoTcpV4, 1448, 34, 16);
  r.transmit_with(tso, seg, {0, 100});
  ASSERT_EQ(r.backend.guest_offloads.size(), 1u)
      << "the backend was not told what the driver takes";
  EXPECT_EQ(r.backend.guest_offloads[0], (std::array<bool, 3>{true, true, false}));
  ASSERT_EQ(r.backend.sent.size(), 1u);
  Bytes want = tso;
  want.insert(want.end(), seg.begin(), seg.end());
  EXPECT_EQ(r.backend.sent[0], want);

  // Not negotiated or malformed: dropped.
  r.transmit_with(vnet_hdr(VirtioNet::kHdrFNeedsCsum, VirtioNet::kGsoTcpV6, 1448, 54, 16),
                  seg);                                           // no HOST_TSO6
  r.transmit_with(vnet_hdr(0, VirtioNet::kGsoTcpV4, 1448), seg);  // GSO without a partial checksum
  r.transmit_with(vnet_hdr(VirtioNet::kHdrFNeedsCsum, VirtioNet::kGsoTcpV4, 0, 34, 16),
                  seg);  // gso_size 0
  r.transmit_with(vnet_hdr(VirtioNet::kHdrFNeedsCsum, 0, 0, 59, 0),
                  frame_of(60, 1));                                      // checksum past the end
  r.transmit_with(vnet_hdr(0, VirtioNet::kGsoTcpV4 | 0x80, 1448), seg);  // ECN
  r.transmit_with(vnet_hdr(4, 0), frame_of(60, 1));                      // an unknown flag
  r.transmit(frame_of(1500 + 18 + 1, 1));                                // too big without GSO
  EXPECT_EQ(r.backend.sent.size(), 1u);
  EXPECT_EQ(r.net.stats().tx_dropped, 7u);
  r.transmit_with(vnet_hdr(VirtioNet::kHdrFNeedsCsum, 0, 0, 34, 6),
                  frame_of(60, 2));  // a plain partial checksum
  EXPECT_EQ(r.backend.sent.size(), 2u);

  // Receive: a GSO frame from the host keeps its header (num_buffers filled in) over as many
  // buffers as it needs; one the driver did not take (TSO6) is dropped.
  r.post_rx(0, 8, 4096);
  r.notify();
  Bytes in = vnet_hdr(VirtioNet::kHdrFNeedsCsum, VirtioNet::kGsoTcpV4, 1448, 34, 16);
  const Bytes big = frame_of(9000, 8);
  in.insert(in.end(), big.begin(), big.end());
  Bytes v6 = vnet_hdr(VirtioNet::kHdrFNeedsCsum, VirtioNet::kGsoTcpV6, 1428, 54, 16);
  v6.insert(v6.end(), big.begin(), big.end());
  ASSERT_TRUE(r.net.receive(v6));
  ASSERT_TRUE(r.net.receive(in));
  r.net.flush_rx();
  ASSERT_EQ(r.used_idx(VirtioNet::kRxQueue), 3) << "12 + 9000 bytes in 4096-byte buffers";
  EXPECT_EQ(r.read(NetRig::rx_buf(0), 12),
            vnet_hdr(VirtioNet::kHdrFNeedsCsum, VirtioNet::kGsoTcpV4, 1448, 34, 16, 3));
  Bytes got = r.read(NetRig::rx_buf(0) + 12, 4084);
  for (uint16_t i = 1; i < 3; ++i) {
    Bytes b = r.read(NetRig::rx_buf(i), r.used(0, i).second);
    got.insert(got.end(), b.begin(), b.end());
  }
  EXPECT_EQ(got, big);
  EXPECT_EQ(r.net.stats().rx_dropped, 1u);
  EXPECT_FALSE(r.net.receive(Bytes(12 + 13, 0))) << "shorter than header + Ethernet header";
}

// A driver that takes no offloads: the backend is told so, and DATA_VALID is not passed on.
TEST(VirtioNet, OffloadsTheDriverRefusedStayOff) {
  NetRig r(kVirtioFVersion1 | VirtioNet::kFeatureMrgRxbuf, 8, /*checksums=*/false, 1500,
           /*offloads=*/true);
  r.post_rx(0, 2, 2048);
  r.notify();
  ASSERT_EQ(r.backend.guest_offloads.size(), 1u);
  EXPECT_EQ(r.backend.guest_offloads[0], (std::array<bool, 3>{false, false, false}));
  Bytes in = vnet_hdr(VirtioNet::kHdrFDataValid, 0);
  const Bytes f = frame_of(100, 3);
  in.insert(in.end(), f.begin(), f.end());
  ASSERT_TRUE(r.net.receive(in));
  r.net.flush_rx();
  ASSERT_EQ(r.used_idx(VirtioNet::kRxQueue), 1);
  EXPECT_EQ(r.read(NetRig::rx_buf(0), 12), vnet_hdr(0, 0, 0, 0, 0, 1));
  EXPECT_EQ(r.read(NetRig::rx_buf(0) + 12, 100), f);
  r.transmit_with(vnet_hdr(VirtioNet::kHdrFNeedsCsum, 0, 0, 34, 6),
                  frame_of(60, 2));  // CSUM not negotiated
  EXPECT_TRUE(r.backend.sent.empty());
}

// A snapshot of a tap-networked machine is taken with TapShapeBackend (no device, no root): its
// NIC offers what a tap device's does, so the driver that resumes on a real tap device took
// the same features; what the guest sends is dropped, and its loop serves only the watches.
TEST(VirtioNet, ATapShapedBackendOffersWhatATapDeviceOffers) {
  TapShapeBackend shape;
  FakeBackend tap_like(/*checksums=*/false, /*offloading=*/true);
  VirtioNet a(shape, kMac, 1500), b(tap_like, kMac, 1500);
  EXPECT_EQ(a.features(), b.features());
  EXPECT_TRUE(a.features() & VirtioNet::kFeatureHostTso4);
  shape.send(Bytes(60, 0));
  EXPECT_EQ(shape.dropped(), 1u);

  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd rd(p[0]), wr(p[1]);
  ASSERT_EQ(::write(wr.get(), "x", 1), 1);
  int calls = 0;
  std::vector<NetBackend::Watch> watches{{rd.get(), [&] { return ++calls < 1; }}};
  shape.run(watches);  // returns once the watch's callback says so
  EXPECT_EQ(calls, 1);
}
