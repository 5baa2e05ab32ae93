// libFuzzer target for virtio-net's transmit and receive paths: the input becomes the first
// 64 KiB of a guest's memory (descriptor tables, rings, headers, buffers); its first bytes also
// pick the negotiated features, the queue size, where the rings live and which frames arrive
// for the guest. Both queues are then processed through the transport as the network thread
// would, with a backend that answers some frames at once (as libslirp answers ARP), with or
// without offloads (a tap's vnet header passed through, partial checksums and GSO). Crashes,
// out-of-bounds accesses (ASan) and UB (UBSan) are bugs.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "echo_backend.hpp"
#include "guest_memory.hpp"
#include "virtio_mmio.hpp"
#include "virtio_net.hpp"

using namespace img2vm::vm;

using img2vm::fuzzing::EchoBackend;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static GuestMemory mem(1u << 20);
  static EchoBackend plain_backend(false), offload_backend(true);
  static VirtioNet* plain = new VirtioNet(plain_backend, {0x52, 0x54, 0, 0x12, 0x34, 0x56}, 1500);
  static VirtioNet* offloading =
      new VirtioNet(offload_backend, {0x52, 0x54, 0, 0x12, 0x34, 0x57}, 1500);
  if (size < 8) return 0;
  VirtioNet* net = (data[0] & 8) ? offloading : plain;
  std::memset(mem.host_base(), 0, 0x10000);
  std::memcpy(mem.host_base(), data, std::min<size_t>(size, 0x10000));

  VirtioMmio dev(mem, *net, [] {});
  net->set_kick([&dev] { dev.notify(); });
  auto wr = [&](uint64_t off, uint32_t v) {
    dev.write(off, reinterpret_cast<const uint8_t*>(&v), 4);
  };
  uint64_t features = kVirtioFVersion1 | VirtioNet::kFeatureMac | VirtioNet::kFeatureMtu;
  if (data[0] & 1) features |= VirtioNet::kFeatureMrgRxbuf;
  if (data[0] & 2) features |= VirtioNet::kFeatureGuestCsum;
  if (data[0] & 8) {
    // Offloads as the input picks them (any subset the device offers).
    if (data[6] & 1) features |= VirtioNet::kFeatureCsum;
    if (data[6] & 2) features |= VirtioNet::kFeatureHostTso4;
    if (data[6] & 4) features |= VirtioNet::kFeatureHostTso6;
    if (data[6] & 8) features |= VirtioNet::kFeatureGuestTso4;
    if (data[6] & 16) features |= VirtioNet::kFeatureGuestTso6;
  }
  wr(0x070, 0);
  wr(0x070, 3);
  wr(0x024, 0);
  wr(0x020, uint32_t(features));
  wr(0x024, 1);
  wr(0x020, uint32_t(features >> 32));
  wr(0x070, 11);
  for (uint32_t q = 0; q < 2; ++q) {
    wr(0x030, q);
    wr(0x038, 1u << (data[1 + q] % 10));  // queue sizes 1..512 (512 is refused)
    wr(0x080, uint32_t(data[3 + 2 * q]) << 8);
    wr(0x090, uint32_t(data[4 + 2 * q]) << 6);
    wr(0x0a0, 0x8000 + q * 0x4000 + (uint32_t(data[3 + 2 * q] ^ data[4 + 2 * q]) << 4));
    wr(0x044, 1);
  }
  wr(0x070, 15);

  // Frames for the guest, cut from the input.
  unsigned frames = data[7] % 8;
  size_t off = 0x100;
  for (unsigned i = 0; i < frames && off < size; ++i) {
    size_t len = (size_t(data[0] ^ data[7]) * 13 + i * 397) % 1600;
    len = std::min(len, size - off);
    net->receive({data + off, len});
    off += len;
  }
  dev.notify();
  net->flush_rx();
  dev.notify();                   // again: nothing new must be fine too
  if (data[0] & 4) wr(0x070, 0);  // a reset with frames still pending
  net->flush_rx();
  wr(0x070, 0);  // leave nothing pending for the next input
  net->set_kick({});
  return 0;
}
