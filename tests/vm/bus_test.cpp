// The machine's buses without KVM: range registration and lookup (bus.hpp), the guest init's
// ports as the runner lays them out (guest_ports.hpp), and the virtio-mmio device table with the
// kernel command line it produces (mmio_devices.hpp), which the guest depends on.
#include "bus.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "guest_ports.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/guestabi/ports.hpp"
#include "img2vm/vm/net_slirp.hpp"
#include "mmio_devices.hpp"
#include "virtio_blk.hpp"
#include "virtio_net.hpp"

using namespace img2vm;
using namespace img2vm::vm;

namespace {

struct Access {
  std::string device;
  uint64_t offset;
  bool write;
  unsigned size;
};

// A bus whose devices record what reaches them and read as 0xa0 + their index.
struct RecordingBus {
  Bus bus{"test", 0xff};
  std::vector<Access> log;
  void add(uint64_t base, uint64_t len, std::string name) {
    uint8_t value = uint8_t(0xa0 + bus.ranges().size());
    bus.add(base, len, name,
            [this, name, value](uint64_t offset, bool write, uint8_t* data, unsigned size) {
              log.push_back({name, offset, write, size});
              if (!write) std::memset(data, value, size);
            });
  }
};

std::string owner(const Bus& bus, uint64_t addr) {
  const Bus::Range* r = bus.find(addr);
  return r ? r->name : "";
}

TEST(Bus, LookupFindsTheRangeHoldingTheAddressUpToItsLastByte) {
  RecordingBus b;
  b.add(0x60, 1, "kbd");
  b.add(0x3f8, 8, "com1");
  b.add(0x64, 1, "kbd-cmd");  // registered out of order
  EXPECT_EQ(owner(b.bus, 0x5f), "");
  EXPECT_EQ(owner(b.bus, 0x60), "kbd");
  EXPECT_EQ(owner(b.bus, 0x61), "");
  EXPECT_EQ(owner(b.bus, 0x63), "");
  EXPECT_EQ(owner(b.bus, 0x64), "kbd-cmd");
  EXPECT_EQ(owner(b.bus, 0x3f7), "");
  EXPECT_EQ(owner(b.bus, 0x3f8), "com1");
  EXPECT_EQ(owner(b.bus, 0x3ff), "com1");
  EXPECT_EQ(owner(b.bus, 0x400), "");
  EXPECT_EQ(owner(b.bus, 0), "");
  EXPECT_EQ(owner(b.bus, ~0ull), "");
  ASSERT_EQ(b.bus.ranges().size(), 3u);
  EXPECT_EQ(b.bus.ranges()[0].base, 0x60u);
  EXPECT_EQ(b.bus.ranges()[1].base, 0x64u);
  EXPECT_EQ(b.bus.ranges()[2].base, 0x3f8u);
}

TEST(Bus, AnAccessReachesItsDeviceWithTheOffsetAndSize) {
  RecordingBus b;
  b.add(0x3f8, 8, "com1");
  uint8_t data[4] = {0x11, 0x22, 0x33, 0x44};
  b.bus.access(0x3fd, false, data, 1);
  EXPECT_EQ(data[0], 0xa0);
  b.bus.access(0x3f8, true, data, 1);
  // Routed by its first byte: a wide access at the last port still goes to the device, which
  // decides what it means.
  b.bus.access(0x3ff, false, data, 4);
  ASSERT_EQ(b.log.size(), 3u);
  EXPECT_EQ(b.log[0].offset, 5u);
  EXPECT_FALSE(b.log[0].write);
  EXPECT_EQ(b.log[1].offset, 0u);
  EXPECT_TRUE(b.log[1].write);
  EXPECT_EQ(b.log[2].offset, 7u);
  EXPECT_EQ(b.log[2].size, 4u);
}

TEST(Bus, NothingThereReadsAsTheFloatingValueAndIgnoresWrites) {
  RecordingBus b;
  b.add(0x60, 1, "kbd");
  uint8_t data[4] = {1, 2, 3, 4};
  b.bus.access(0x61, false, data, 4);
  EXPECT_EQ((std::array<uint8_t, 4>{data[0], data[1], data[2], data[3]}),
            (std::array<uint8_t, 4>{0xff, 0xff, 0xff, 0xff}));
  uint8_t w[2] = {7, 8};
  b.bus.access(0x61, true, w, 2);
  EXPECT_EQ(w[0], 7);
  EXPECT_EQ(w[1], 8);
  EXPECT_TRUE(b.log.empty());

  Bus mmio("MMIO", 0);
  uint8_t m[8];
  std::memset(m, 0x5a, sizeof m);
  mmio.access(0xd0000000, false, m, 8);
  for (uint8_t x : m) EXPECT_EQ(x, 0);
}

TEST(Bus, OverlappingRangesAreRefusedAndAdjacentOnesAccepted) {
  RecordingBus b;
  b.add(0x100, 0x10, "a");
  EXPECT_NO_THROW(b.add(0x110, 0x10, "right neighbour"));
  EXPECT_NO_THROW(b.add(0xf0, 0x10, "left neighbour"));
  for (auto [base, len] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0x100, 0x10},  // the same
           {0x108, 1},     // inside
           {0xff, 2},      // across the left neighbour's end into a
           {0x10f, 1},     // a's last byte
           {0x80, 0x200},  // around all of them
           {0x11f, 4},     // the right neighbour's last byte and beyond
       }) {
    try {
      b.add(base, len, "intruder");
      ADD_FAILURE() << "accepted [" << base << ", +" << len << ")";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInternal);
      EXPECT_NE(std::string(e.what()).find("intruder"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("overlaps"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(b.bus.ranges().size(), 3u);
  EXPECT_EQ(owner(b.bus, 0x108), "a");
  EXPECT_THROW(b.add(0x200, 0, "empty"), Error);
  EXPECT_THROW(b.add(~0ull - 1, 4, "wrapping"), Error);
  EXPECT_NO_THROW(b.add(~0ull, 1, "last byte"));
  EXPECT_EQ(owner(b.bus, ~0ull), "last byte");
}

// The port bus as the runner builds it: the guest init's ports alone.
struct AbiPorts {
  Bus bus{"I/O port", 0xff};
  std::vector<std::pair<std::string, uint8_t>> events;
  GuestPorts ports{{
      .exited = [this](uint8_t v) { events.emplace_back("exit", v); },
      .init_failed = [this](uint8_t v) { events.emplace_back("init-fail", v); },
      .boot_mark = [this](uint8_t v) { events.emplace_back("mark", v); },
  }};
  AbiPorts() { ports.attach(bus); }
  // Reads `size` bytes at `port` as a little-endian number.
  uint32_t in(uint16_t port, unsigned size) {
    uint8_t d[4] = {0x12, 0x34, 0x56, 0x78};
    bus.access(port, false, d, size);
    uint32_t v = 0;
    for (unsigned i = 0; i < size; ++i) v |= uint32_t(d[i]) << (8 * i);
    return v;
  }
  void out(uint16_t port, uint8_t value, unsigned size = 1) {
    uint8_t d[4] = {value, 0, 0, 0};
    bus.access(port, true, d, size);
  }
};

TEST(GuestPorts, WritesToTheEventPortsReachTheRunner) {
  AbiPorts p;
  p.out(guestabi::kBootMarkPort, guestabi::kMarkInitStarted);
  p.out(guestabi::kInitFailPort, guestabi::kFailMount);
  p.out(guestabi::kExitPort, 0);
  p.out(guestabi::kExitPort, 137);
  p.out(guestabi::kExitPort, 1, 2);  // not 8-bit: nothing
  p.out(guestabi::kSignalPort, 9);   // a read port
  p.out(guestabi::kWinRowsPort, 9);
  using E = std::pair<std::string, uint8_t>;
  EXPECT_EQ(p.events, (std::vector<E>{{"mark", 1}, {"init-fail", 4}, {"exit", 0}, {"exit", 137}}));
}

TEST(GuestPorts, ReadsReturnWhatTheHostSetOnce) {
  AbiPorts p;
  EXPECT_EQ(p.in(guestabi::kSignalPort, 1), 0u);
  p.ports.request_signal(15);
  p.ports.set_window_size(40, 132);
  p.ports.add_input_bytes(70000);
  p.ports.add_input_bytes(5);
  p.ports.close_input();
  EXPECT_EQ(p.in(guestabi::kWinRowsPort, 2), 40u);
  EXPECT_EQ(p.in(guestabi::kWinColsPort, 2), 132u);
  EXPECT_EQ(p.in(guestabi::kStdinBytesPort, 4), 70005u);
  // A signal first, then the resize, then the end of input, each once.
  EXPECT_EQ(p.in(guestabi::kSignalPort, 1), 15u);
  EXPECT_EQ(p.in(guestabi::kSignalPort, 1), guestabi::kWindowSizeChanged);
  EXPECT_EQ(p.in(guestabi::kSignalPort, 1), guestabi::kStdinClosed);
  EXPECT_EQ(p.in(guestabi::kSignalPort, 1), 0u);
  p.ports.request_signal(guestabi::kStopRequest);
  EXPECT_EQ(p.in(guestabi::kSignalPort, 1), guestabi::kStopRequest);
}

TEST(GuestPorts, EveryOtherAccessIsAFloatingBus) {
  AbiPorts p;
  p.ports.request_signal(3);
  p.ports.set_window_size(0x1234, 0x5678);
  p.ports.add_input_bytes(9);
  // Wrong widths, reads of write ports, bytes inside wide ports, and the ports around them.
  EXPECT_EQ(p.in(guestabi::kSignalPort, 2), 0xffffu);
  EXPECT_EQ(p.in(guestabi::kSignalPort, 4), 0xffffffffu);
  EXPECT_EQ(p.in(guestabi::kWinRowsPort, 1), 0xffu);
  EXPECT_EQ(p.in(guestabi::kWinRowsPort + 1, 1), 0xffu);
  EXPECT_EQ(p.in(guestabi::kWinColsPort + 1, 2), 0xffffu);
  EXPECT_EQ(p.in(guestabi::kWinColsPort, 4), 0xffffffffu);
  EXPECT_EQ(p.in(guestabi::kStdinBytesPort, 2), 0xffffu);
  EXPECT_EQ(p.in(guestabi::kStdinBytesPort + 1, 1), 0xffu);
  EXPECT_EQ(p.in(guestabi::kStdinBytesPort + 3, 1), 0xffu);
  EXPECT_EQ(p.in(guestabi::kExitPort, 1), 0xffu);
  EXPECT_EQ(p.in(guestabi::kInitFailPort, 1), 0xffu);
  EXPECT_EQ(p.in(guestabi::kBootMarkPort, 1), 0xffu);
  EXPECT_EQ(p.in(guestabi::kExitPort - 1, 1), 0xffu);
  EXPECT_EQ(p.in(0x100, 4), 0xffffffffu);
  EXPECT_TRUE(p.events.empty());
  // None of that consumed the pending signal.
  EXPECT_EQ(p.in(guestabi::kSignalPort, 1), 3u);
  // The ports span the init's ioperm range, kExitPort to 0xff.
  for (unsigned port = guestabi::kFirstPort; port < guestabi::kFirstPort + guestabi::kPortCount;
       ++port)
    EXPECT_NE(p.bus.find(port), nullptr) << std::hex << port;
}

// A small disk image file.
std::filesystem::path disk_image(const TempDir& dir, const std::string& name) {
  auto path = dir.path() / name;
  UniqueFd fd = open_file(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (::ftruncate(fd.get(), 1 << 20) != 0) throw_errno("ftruncate");
  return path;
}

uint32_t reg(const Bus& bus, uint64_t addr) {
  uint8_t d[4];
  bus.access(addr, false, d, 4);
  uint32_t v;
  std::memcpy(&v, d, 4);
  return v;
}

// Two disks and a NIC, attached as Machine does: the device table and the kernel command line
// the guest kernel probes (virtio_mmio.device=4K@<base>:<irq>) must not change.
TEST(MmioDevices, TwoDisksAndANicGetTheFixedSlotsAndCommandLine) {
  TempDir dir("img2vm-bus-test");
  GuestMemory mem(1 << 20);
  Bus bus("MMIO", 0);
  MmioDeviceManager devices(bus);
  VirtioBlk blk0(open_disk_view(disk_image(dir, "a.img"), DiskMode::kReadOnly), "img2vm0");
  VirtioBlk blk1(open_disk_view(disk_image(dir, "b.img"), DiskMode::kReadOnly), "img2vm1");
  SlirpBackend backend(UserNetConfig{}, 1500);
  VirtioNet net(backend, {0x52, 0x54, 0x00, 0x12, 0x34, 0x56}, 1500);
  VirtioMmio t0(mem, blk0, {}), t1(mem, blk1, {}), t2(mem, net, {});

  MmioSlot s0 = devices.attach("virtio-blk 0", t0);
  MmioSlot s1 = devices.attach("virtio-blk 1", t1);
  MmioSlot s2 = devices.attach("virtio-net", t2);
  EXPECT_EQ(s0.base, 0xd0000000u);
  EXPECT_EQ(s0.irq, 5u);
  EXPECT_EQ(s1.base, 0xd0001000u);
  EXPECT_EQ(s1.irq, 6u);
  EXPECT_EQ(s2.base, 0xd0002000u);
  EXPECT_EQ(s2.irq, 7u);
  EXPECT_EQ(devices.command_line("console=ttyS0 quiet"),
            "console=ttyS0 quiet virtio_mmio.device=4K@0xd0000000:5 "
            "virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7");
  EXPECT_EQ(devices.command_line(""),
            "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 "
            "virtio_mmio.device=4K@0xd0002000:7");

  // Each slot answers as its device (magic, then device id: 2 block, 1 network), up to its last
  // register; beyond the last slot reads are 0.
  for (uint64_t base : {0xd0000000u, 0xd0001000u, 0xd0002000u})
    EXPECT_EQ(reg(bus, base), VirtioMmio::kMagic) << std::hex << base;
  EXPECT_EQ(reg(bus, 0xd0000008), 2u);
  EXPECT_EQ(reg(bus, 0xd0001008), 2u);
  EXPECT_EQ(reg(bus, 0xd0002008), 1u);
  EXPECT_EQ(reg(bus, 0xd0000ffc), 0u);
  EXPECT_EQ(reg(bus, 0xd0003000), 0u);
  EXPECT_EQ(reg(bus, 0xcffffffc), 0u);
  // The config space is the device's: the first disk's capacity in sectors (1 MiB / 512).
  EXPECT_EQ(reg(bus, 0xd0000100), 2048u);
}

TEST(MmioDevices, NoSlotBeyondTheLastInterruptLine) {
  GuestMemory mem(1 << 20);
  Bus bus("MMIO", 0);
  MmioDeviceManager devices(bus);
  SlirpBackend backend(UserNetConfig{}, 1500);
  VirtioNet net(backend, {0x52, 0x54, 0x00, 0x12, 0x34, 0x56}, 1500);
  std::vector<std::unique_ptr<VirtioMmio>> transports;
  for (unsigned irq = 5; irq <= MmioDeviceManager::kLastIrq; ++irq) {
    transports.push_back(std::make_unique<VirtioMmio>(mem, net, nullptr));
    EXPECT_EQ(devices.attach("dev", *transports.back()).irq, irq);
  }
  VirtioMmio extra(mem, net, {});
  EXPECT_THROW(devices.attach("one too many", extra), Error);
  EXPECT_EQ(bus.ranges().size(), MmioDeviceManager::kLastIrq - 4);
}

}  // namespace
