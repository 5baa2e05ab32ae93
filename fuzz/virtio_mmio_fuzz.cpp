// libFuzzer target for the virtio-mmio transport as a hostile driver drives it: random register
// sequences (reads and writes at any offset and width, config space included), resets and
// queue reconfiguration in the middle of traffic (a queue switched off and moved while the
// device still holds frames for it, status 0 with requests posted), notifications, the guest
// posting requests as a driver does or rewriting its rings between them, and frames arriving
// for the guest, against virtio-blk (a plain disk and a copy-on-write overlay) and virtio-net
// (with and without offloads).
//
// Guest memory comes from the front of the input, the operations from its back. Guest RAM has
// guard pages around it (GuestMemory), so an access just outside it crashes, and ASan/UBSan see
// the host side. After every operation the bytes of guest memory the device changed must lie in
// a used ring or in a device-writable buffer of a queue the driver set up (as the fuzzer tracks
// them from its own register writes); anything else is a device writing where it must not.
#include <fuzzer/FuzzedDataProvider.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "echo_backend.hpp"
#include "guest_memory.hpp"
#include "img2vm/vm/disk_view.hpp"
#include "virtio_blk.hpp"
#include "virtio_mmio.hpp"
#include "virtio_net.hpp"

using namespace img2vm::vm;
using img2vm::fuzzing::EchoBackend;

namespace {

constexpr uint64_t kMemSize = 64 * 1024;

// What the driver programmed, as the transport accepts it: queue registers only change while
// the queue is not ready, only 32-bit aligned accesses count, status 0 resets everything.
struct QueueShadow {
  uint32_t size = SplitQueue::kMaxSize;
  uint64_t desc = 0, avail = 0, used = 0;
};

struct Driver {
  VirtioMmio& mmio;
  const GuestMemory& mem;
  std::vector<QueueShadow> queues;
  std::vector<uint16_t> next_desc = std::vector<uint16_t>(queues.size());
  uint32_t sel = 0;
  std::vector<uint8_t>* snapshot = nullptr;  // what the device is compared against

  // The driver (the guest) writes its memory; not the device's doing.
  void poke(uint64_t gpa, const void* src, uint64_t len) {
    if (!mem.write(gpa, src, len)) return;
    if (snapshot) std::memcpy(snapshot->data() + gpa, src, len);
  }

  uint32_t read32(uint64_t off) {
    uint32_t v = 0;
    mmio.read(off, reinterpret_cast<uint8_t*>(&v), 4);
    return v;
  }
  void write(uint64_t off, uint64_t value, unsigned width) {
    uint8_t bytes[8];
    std::memcpy(bytes, &value, sizeof bytes);
    if (width == 4 && off % 4 == 0) track(off, uint32_t(value));
    mmio.write(off, bytes, width);
  }
  void write32(uint64_t off, uint32_t v) { write(off, v, 4); }

  void track(uint64_t off, uint32_t v) {
    auto low = [](uint64_t& a, uint32_t x) { a = (a & ~0xffffffffull) | x; };
    auto high = [](uint64_t& a, uint32_t x) { a = (a & 0xffffffffull) | (uint64_t{x} << 32); };
    if (off == 0x030) sel = v;
    if (off == 0x070 && v == 0) {
      for (auto& q : queues) q = QueueShadow{};
      sel = 0;
    }
    if (sel >= queues.size() || read32(0x044) != 0) return;  // no such queue, or live: ignored
    QueueShadow& q = queues[sel];
    switch (off) {
      case 0x038:
        q.size = v > 0xffff ? 0 : v;
        break;
      case 0x080:
        low(q.desc, v);
        break;
      case 0x084:
        high(q.desc, v);
        break;
      case 0x090:
        low(q.avail, v);
        break;
      case 0x094:
        high(q.avail, v);
        break;
      case 0x0a0:
        low(q.used, v);
        break;
      case 0x0a4:
        high(q.used, v);
        break;
      default:
        break;
    }
  }

  // Features, then the queues at addresses inside the input's memory, then DRIVER_OK.
  void bring_up(FuzzedDataProvider& in, uint64_t offered) {
    write32(0x070, 0);
    write32(0x070, 3);
    uint64_t f = offered & (in.ConsumeIntegral<uint64_t>() | kVirtioFVersion1);
    write32(0x024, 0);
    write32(0x020, uint32_t(f));
    write32(0x024, 1);
    write32(0x020, uint32_t(f >> 32));
    write32(0x070, 11);
    for (uint32_t q = 0; q < queues.size(); ++q) setup_queue(in, q);
    write32(0x070, 15);
  }
  // What a driver does to make a request: a chain of 1-4 descriptors (buffers anywhere in
  // memory, device-writable or not, as the input says), a virtio-blk header in the first buffer
  // (a known or any type, a small sector), and the chain's head in the avail ring. Whether the
  // device accepts it is the device's business.
  void post(FuzzedDataProvider& in, uint32_t qi, bool blk) {
    const QueueShadow& q = queues[qi];
    const uint32_t n = std::min<uint32_t>(q.size, SplitQueue::kMaxSize);
    if (n == 0) return;
    const unsigned parts = in.ConsumeIntegralInRange(1, 4);
    const uint16_t head = uint16_t(next_desc[qi] % n);
    for (unsigned k = 0; k < parts; ++k) {
      const uint16_t idx = uint16_t((head + k) % n);
      uint8_t d[16];
      const uint64_t addr = in.ConsumeIntegralInRange<uint64_t>(0, kMemSize - 1);
      const uint32_t len = in.ConsumeIntegralInRange<uint32_t>(k == 0 && blk ? 16 : 0, 4096);
      const uint16_t flags = uint16_t((k + 1 < parts ? SplitQueue::kDescNext : 0) |
                                      (in.ConsumeBool() ? SplitQueue::kDescWrite : 0));
      const uint16_t next = uint16_t((idx + 1) % n);
      std::memcpy(d, &addr, 8);
      std::memcpy(d + 8, &len, 4);
      std::memcpy(d + 12, &flags, 2);
      std::memcpy(d + 14, &next, 2);
      poke(q.desc + 16ull * idx, d, sizeof d);
      if (k == 0 && blk) {
        static constexpr uint32_t kTypes[] = {VirtioBlk::kTypeIn, VirtioBlk::kTypeOut,
                                              VirtioBlk::kTypeFlush, VirtioBlk::kTypeGetId};
        uint8_t h[16] = {};
        const uint32_t type = in.ConsumeBool() ? kTypes[in.ConsumeIntegralInRange<size_t>(0, 3)]
                                               : in.ConsumeIntegral<uint32_t>();
        const uint64_t sector = in.ConsumeIntegralInRange<uint64_t>(0, 80);
        std::memcpy(h, &type, 4);
        std::memcpy(h + 8, &sector, 8);
        poke(addr, h, sizeof h);
      }
    }
    next_desc[qi] = uint16_t(next_desc[qi] + parts);
    uint16_t avail_idx = 0;
    if (!mem.read(q.avail + 2, &avail_idx, 2)) return;
    poke(q.avail + 4 + 2ull * (avail_idx % n), &head, 2);
    avail_idx = uint16_t(avail_idx + 1);
    poke(q.avail + 2, &avail_idx, 2);
  }

  void setup_queue(FuzzedDataProvider& in, uint32_t q) {
    write32(0x030, q);
    write32(0x044, 0);
    write32(0x038, 1u << in.ConsumeIntegralInRange(0, 8));
    write32(0x080, in.ConsumeIntegralInRange<uint32_t>(0, kMemSize / 16 - 1) * 16);
    write32(0x090, in.ConsumeIntegralInRange<uint32_t>(0, kMemSize / 2 - 1) * 2);
    write32(0x0a0, in.ConsumeIntegralInRange<uint32_t>(0, kMemSize / 4 - 1) * 4);
    // As a driver does: empty rings (flags and index 0) before the queue goes live.
    if (q < queues.size()) {
      const uint32_t zero = 0;
      poke(queues[q].avail, &zero, 4);
      poke(queues[q].used, &zero, 4);
      next_desc[q] = 0;
    }
    write32(0x044, 1);
  }
};

struct Region {
  uint64_t lo, hi;
};

// Where the device may write: each set-up queue's used ring and the device-writable buffers its
// descriptor table names (as the table is now).
std::vector<Region> writable_regions(const GuestMemory& mem,
                                     const std::vector<QueueShadow>& queues) {
  std::vector<Region> out;
  for (const auto& q : queues) {
    const uint32_t n = std::min<uint32_t>(q.size, SplitQueue::kMaxSize);
    out.push_back({q.used, q.used + 4 + 8ull * n + 2});
    for (uint32_t i = 0; i < n; ++i) {
      uint8_t d[16];
      if (!mem.read(q.desc + 16ull * i, d, sizeof d)) break;
      uint64_t addr;
      uint32_t len;
      uint16_t flags;
      std::memcpy(&addr, d, 8);
      std::memcpy(&len, d + 8, 4);
      std::memcpy(&flags, d + 12, 2);
      if (flags & SplitQueue::kDescWrite) out.push_back({addr, addr + len});
    }
  }
  return out;
}

void check_writes(const GuestMemory& mem, const std::vector<uint8_t>& before,
                  const std::vector<Region>& allowed) {
  const uint8_t* now = mem.host_base();
  constexpr uint64_t kBlock = 512;
  for (uint64_t b = 0; b < kMemSize; b += kBlock) {
    if (std::memcmp(now + b, before.data() + b, kBlock) == 0) continue;
    for (uint64_t i = b; i < b + kBlock; ++i) {
      if (now[i] == before[i]) continue;
      bool ok = false;
      for (const auto& r : allowed) ok = ok || (i >= r.lo && i < r.hi);
      if (!ok) __builtin_trap();  // the device wrote outside what the driver gave it
    }
  }
}

std::unique_ptr<VirtioBlk> make_disk(bool overlay) {
  if (!overlay) {
    int fd = ::memfd_create("fuzz-disk", MFD_CLOEXEC);
    if (fd < 0 || ::ftruncate(fd, 64 * 512) != 0) __builtin_trap();
    return std::make_unique<VirtioBlk>(fd_disk_view(fd, 64 * 512, false), "fuzz");
  }
  int base = ::memfd_create("fuzz-base", MFD_CLOEXEC),
      top = ::memfd_create("fuzz-top", MFD_CLOEXEC);
  if (base < 0 || top < 0 || ::ftruncate(base, 40 * 512 + 100) != 0) __builtin_trap();
  return std::make_unique<VirtioBlk>(overlay_disk_view(base, top, 40 * 512 + 100), "fuzz-cow");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static GuestMemory mem(kMemSize);
  static EchoBackend plain_backend(false), offload_backend(true);
  static VirtioNet* plain_net =
      new VirtioNet(plain_backend, {0x52, 0x54, 0, 0x12, 0x34, 0x56}, 1500);
  static VirtioNet* offload_net =
      new VirtioNet(offload_backend, {0x52, 0x54, 0, 0x12, 0x34, 0x57}, 1500);

  FuzzedDataProvider in(data, size);
  const unsigned which = in.ConsumeIntegralInRange(0, 3);
  std::vector<uint8_t> image =
      in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, kMemSize));
  // Not zeros past the input: a device writing a 0 where it must not write is seen too.
  std::memset(mem.host_base(), 0xa5, kMemSize);
  if (!image.empty()) std::memcpy(mem.host_base(), image.data(), image.size());

  std::unique_ptr<VirtioBlk> blk;
  VirtioNet* net = nullptr;
  VirtioDevice* dev;
  if (which < 2) {
    blk = make_disk(which == 1);
    dev = blk.get();
  } else {
    net = which == 2 ? plain_net : offload_net;
    dev = net;
  }
  VirtioMmio mmio(mem, *dev, [] {});
  if (net) net->set_kick([&mmio] { mmio.notify(); });
  Driver drv{mmio, mem, std::vector<QueueShadow>(dev->num_queues())};
  drv.write32(0x070, 0);  // a clean start: the static net devices may hold state from before

  std::vector<uint8_t> before(kMemSize);
  drv.snapshot = &before;
  for (int ops = 0; ops < 256 && in.remaining_bytes() > 0; ++ops) {
    const unsigned op = in.ConsumeIntegralInRange(0, 12);
    if (op == 12) {  // the guest posts a request (or a receive buffer)
      drv.post(in, in.ConsumeIntegralInRange<uint32_t>(0, dev->num_queues() - 1), blk != nullptr);
      continue;
    }
    if (op == 9) {
      // The guest writes its memory (rings, descriptors, buffers) between notifications.
      uint64_t at = in.ConsumeIntegralInRange<uint64_t>(0, kMemSize - 1);
      std::vector<uint8_t> b = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(1, 64));
      if (!b.empty())
        std::memcpy(mem.host_base() + at, b.data(), std::min<size_t>(b.size(), kMemSize - at));
      continue;
    }
    std::memcpy(before.data(), mem.host_base(), kMemSize);
    const std::vector<Region> allowed = writable_regions(mem, drv.queues);
    switch (op) {
      case 0: {  // any read, any width, config space included
        uint8_t buf[8];
        unsigned width = in.ConsumeIntegralInRange(1, 8);
        mmio.read(in.ConsumeIntegralInRange<uint64_t>(0, 0x1ff), buf, width);
        break;
      }
      case 1: {  // any write
        uint64_t off = in.ConsumeIntegralInRange<uint64_t>(0, 0x1ff);
        unsigned width = in.ConsumeIntegralInRange(1, 8);
        drv.write(off, in.ConsumeIntegral<uint64_t>(), width);
        break;
      }
      case 2: {  // a register write with a value that matters, at a register that matters
        static constexpr uint16_t kRegs[] = {0x014, 0x020, 0x024, 0x030, 0x038, 0x044, 0x050, 0x064,
                                             0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4};
        uint16_t off = kRegs[in.ConsumeIntegralInRange<size_t>(0, std::size(kRegs) - 1)];
        drv.write32(off, in.ConsumeIntegralInRange<uint32_t>(0, 0x20));
        break;
      }
      case 3:
        drv.bring_up(in, dev->features());
        break;
      case 4:
        drv.write32(0x050, in.ConsumeIntegralInRange<uint32_t>(0, 2));
        break;  // QueueNotify
      case 5:
        mmio.notify();
        break;  // the ioeventfd, as the I/O or network thread sees it
      case 6:
        drv.write32(0x070, 0);
        break;   // reset, with whatever is in flight
      case 7: {  // a queue switched off, moved and switched on again, requests still posted
        uint32_t q = in.ConsumeIntegralInRange<uint32_t>(0, dev->num_queues() - 1);
        drv.setup_queue(in, q);
        break;
      }
      case 8:
        if (net) {  // frames for the guest, cut from the input
          std::vector<uint8_t> f =
              in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, 1600));
          net->receive(f);
        }
        break;
      case 10:
        if (net) net->flush_rx();
        break;
      case 11: {  // the driver acknowledges interrupts and reads the status back
        drv.write32(0x064, drv.read32(0x060));
        (void)drv.read32(0x070);
        break;
      }
      default:
        break;
    }
    check_writes(mem, before, allowed);
  }
  drv.write32(0x070, 0);  // leave nothing pending for the next input
  if (net) {
    net->flush_rx();
    net->set_kick({});
  }
  return 0;
}
