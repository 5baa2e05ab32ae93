// Split virtqueues and virtio-blk requests against synthetic guest memory, including malicious
// descriptor chains, and the virtio-mmio register protocol.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "img2vm/base/fd.hpp"
#include "virtio_blk.hpp"
#include "virtio_mmio.hpp"

using namespace img2vm;
using namespace img2vm::vm;

namespace {

constexpr uint64_t kDesc = 0x1000, kAvail = 0x2000, kUsed = 0x3000, kHdr = 0x4000, kData = 0x5000,
                   kStatus = 0x8000;
constexpr uint16_t kQ = 8;

struct Rig {
  GuestMemory mem{1u << 20};
  SplitQueue q;
  std::unique_ptr<VirtioBlk> blk;
  UniqueFd disk;
  uint16_t avail_idx = 0;

  explicit Rig(bool ro = false, uint64_t disk_size = 64 * 512) {
    int fd = ::memfd_create("disk", MFD_CLOEXEC);
    ::ftruncate(fd, off_t(disk_size));
    for (uint64_t s = 0; s < disk_size / 512; ++s) {
      char sec[512];
      std::memset(sec, int('A' + s % 26), sizeof sec);
      ::pwrite(fd, sec, sizeof sec, off_t(s * 512));
    }
    disk.reset(::dup(fd));
    blk = std::make_unique<VirtioBlk>(fd_disk_view(fd, disk_size, ro), "unit-disk");
    q.size = kQ;
    q.desc_addr = kDesc;
    q.avail_addr = kAvail;
    q.used_addr = kUsed;
    q.ready = true;
  }
  void desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0) {
    mem.store<uint64_t>(kDesc + 16 * i, addr);
    mem.store<uint32_t>(kDesc + 16 * i + 8, len);
    mem.store<uint16_t>(kDesc + 16 * i + 12, flags);
    mem.store<uint16_t>(kDesc + 16 * i + 14, next);
  }
  void make_avail(uint16_t head) {
    mem.store<uint16_t>(kAvail + 4 + 2 * (avail_idx % kQ), head);
    mem.store<uint16_t>(kAvail + 2, ++avail_idx);
  }
  void header(uint32_t type, uint64_t sector) {
    mem.store<uint32_t>(kHdr, type);
    mem.store<uint32_t>(kHdr + 4, 0);
    mem.store<uint64_t>(kHdr + 8, sector);
    mem.store<uint8_t>(kStatus, 0xee);
  }
  // A standard 3-descriptor request.
  void request(uint32_t type, uint64_t sector, uint32_t len, bool device_writes) {
    header(type, sector);
    desc(0, kHdr, 16, SplitQueue::kDescNext, 1);
    desc(1, kData, len,
         uint16_t(SplitQueue::kDescNext | (device_writes ? SplitQueue::kDescWrite : 0)), 2);
    desc(2, kStatus, 1, SplitQueue::kDescWrite);
    make_avail(0);
  }
  uint16_t used_idx() { return *mem.load<uint16_t>(kUsed + 2); }
  uint32_t used_len(uint16_t i) { return *mem.load<uint32_t>(kUsed + 4 + 8 * (i % kQ) + 4); }
  uint8_t status() { return *mem.load<uint8_t>(kStatus); }
};

}  // namespace

TEST(Virtqueue, ValidateRejectsBadRings) {
  GuestMemory mem(1u << 20);
  SplitQueue q;
  q.size = 8;
  q.desc_addr = kDesc;
  q.avail_addr = kAvail;
  q.used_addr = kUsed;
  EXPECT_EQ(q.validate(mem), "");
  q.size = 6;
  EXPECT_NE(q.validate(mem), "");
  q.size = 512;
  EXPECT_NE(q.validate(mem), "");
  q.size = 8;
  q.desc_addr = kDesc + 8;
  EXPECT_NE(q.validate(mem).find("misaligned"), std::string::npos);
  q.desc_addr = (1u << 20) - 64;
  EXPECT_NE(q.validate(mem).find("descriptor table"), std::string::npos);
  q.desc_addr = kDesc;
  q.used_addr = ~0ull - 3;
  EXPECT_NE(q.validate(mem).find("used ring"), std::string::npos);
}

TEST(VirtioBlkRequests, ReadWriteFlushGetId) {
  Rig r;
  r.request(VirtioBlk::kTypeIn, 2, 1024, true);
  EXPECT_TRUE(r.blk->process(r.mem, r.q));
  EXPECT_EQ(r.used_idx(), 1);
  EXPECT_EQ(r.used_len(0), 1025u);
  EXPECT_EQ(r.status(), VirtioBlk::kStatusOk);
  EXPECT_EQ(*r.mem.load<uint8_t>(kData), 'C');
  EXPECT_EQ(*r.mem.load<uint8_t>(kData + 1023), 'D');

  std::memset(r.mem.ptr(kData, 512), 'w', 512);
  r.request(VirtioBlk::kTypeOut, 5, 512, false);
  r.blk->process(r.mem, r.q);
  EXPECT_EQ(r.status(), VirtioBlk::kStatusOk);
  EXPECT_EQ(r.used_len(1), 1u);
  char sec[512];
  ASSERT_EQ(::pread(r.disk.get(), sec, 512, 5 * 512), 512);
  EXPECT_EQ(std::string(sec, 512), std::string(512, 'w'));

  r.header(VirtioBlk::kTypeFlush, 0);
  r.desc(0, kHdr, 16, SplitQueue::kDescNext, 2);
  r.make_avail(0);
  r.blk->process(r.mem, r.q);
  EXPECT_EQ(r.status(), VirtioBlk::kStatusOk);

  r.request(VirtioBlk::kTypeGetId, 0, 20, true);
  r.blk->process(r.mem, r.q);
  EXPECT_EQ(r.status(), VirtioBlk::kStatusOk);
  EXPECT_STREQ(reinterpret_cast<const char*>(r.mem.ptr(kData, 20)), "unit-disk");
  EXPECT_EQ(r.used_len(3), 21u);
}

TEST(VirtioBlkRequests, OutOfRangeAndMalformedRequestsFailCleanly) {
  Rig r;
  struct Case {
    uint32_t type;
    uint64_t sector;
    uint32_t len;
    bool writes;
    uint8_t want;
  } cases[] = {
      {VirtioBlk::kTypeIn, 64, 512, true, VirtioBlk::kStatusIoErr},     // one past the end
      {VirtioBlk::kTypeIn, 63, 1024, true, VirtioBlk::kStatusIoErr},    // runs past the end
      {VirtioBlk::kTypeIn, ~0ull, 512, true, VirtioBlk::kStatusIoErr},  // sector*512 overflows
      {VirtioBlk::kTypeIn, ~0ull / 512, 512, true, VirtioBlk::kStatusIoErr},
      {VirtioBlk::kTypeIn, 0, 100, true, VirtioBlk::kStatusIoErr},   // partial sector
      {VirtioBlk::kTypeIn, 0, 512, false, VirtioBlk::kStatusIoErr},  // device-readable data for IN
      {VirtioBlk::kTypeOut, 0, 512, true, VirtioBlk::kStatusIoErr},  // device-writable data for OUT
      {VirtioBlk::kTypeGetId, 0, 20, false, VirtioBlk::kStatusIoErr},
      {12345, 0, 512, true, VirtioBlk::kStatusUnsupp},
  };
  uint16_t n = 0;
  for (const auto& c : cases) {
    r.request(c.type, c.sector, c.len, c.writes);
    r.blk->process(r.mem, r.q);
    EXPECT_EQ(r.used_idx(), ++n);
    EXPECT_EQ(r.status(), c.want) << "type " << c.type << " sector " << c.sector << " len "
                                  << c.len;
  }
  // The disk is unchanged.
  char sec[512];
  ASSERT_EQ(::pread(r.disk.get(), sec, 512, 0), 512);
  EXPECT_EQ(sec[0], 'A');
}

TEST(VirtioBlkRequests, ReadOnlyDiskRejectsWrites) {
  Rig r(true);
  EXPECT_TRUE(r.blk->features() & VirtioBlk::kFeatureRo);
  r.request(VirtioBlk::kTypeOut, 0, 512, false);
  r.blk->process(r.mem, r.q);
  EXPECT_EQ(r.status(), VirtioBlk::kStatusIoErr);
}

TEST(VirtioBlkRequests, MaliciousChainsAreReturnedUnused) {
  Rig r;
  // A loop: 0 -> 1 -> 0.
  r.header(VirtioBlk::kTypeIn, 0);
  r.desc(0, kHdr, 16, SplitQueue::kDescNext, 1);
  r.desc(1, kData, 512, SplitQueue::kDescNext | SplitQueue::kDescWrite, 0);
  r.make_avail(0);
  // A buffer beyond guest memory, a length that wraps, a next index beyond the queue,
  // an indirect descriptor, a header in device-writable memory, a chain with no status.
  r.desc(2, kHdr, 16, SplitQueue::kDescNext, 3);
  r.desc(3, 0xfffffffffffff000ull, 512, SplitQueue::kDescNext | SplitQueue::kDescWrite, 4);
  r.desc(4, kStatus, 1, SplitQueue::kDescWrite);
  r.make_avail(2);
  r.desc(5, kData, 0xffffffffu, SplitQueue::kDescWrite);
  r.make_avail(5);
  r.desc(6, kHdr, 16, SplitQueue::kDescNext, 9999);
  r.make_avail(6);
  r.desc(7, kHdr, 16, SplitQueue::kDescIndirect);
  r.make_avail(7);
  EXPECT_TRUE(r.blk->process(r.mem, r.q));
  EXPECT_EQ(r.used_idx(), 5);
  for (uint16_t i = 0; i < 5; ++i) EXPECT_EQ(r.used_len(i), 0u) << i;
  EXPECT_FALSE(r.q.broken());
  EXPECT_EQ(r.status(), 0xee) << "nothing written for a bad chain";

  // Header device-writable / too short / no writable status: completed, nothing transferred.
  r.header(VirtioBlk::kTypeIn, 0);
  r.desc(0, kHdr, 16, SplitQueue::kDescNext | SplitQueue::kDescWrite, 1);
  r.desc(1, kData, 512, SplitQueue::kDescNext | SplitQueue::kDescWrite, 2);
  r.desc(2, kStatus, 1, SplitQueue::kDescWrite);
  r.make_avail(0);
  r.blk->process(r.mem, r.q);
  EXPECT_EQ(r.status(), VirtioBlk::kStatusIoErr);
  r.desc(0, kHdr, 8, SplitQueue::kDescNext, 1);
  r.make_avail(0);
  r.blk->process(r.mem, r.q);
  EXPECT_EQ(r.status(), VirtioBlk::kStatusIoErr);
  r.desc(0, kHdr, 16, SplitQueue::kDescNext, 1);
  r.desc(1, kData, 512, 0);
  r.make_avail(0);
  r.blk->process(r.mem, r.q);
  EXPECT_EQ(r.used_len(7), 0u);
}

TEST(VirtioBlkRequests, InconsistentAvailRingBreaksTheQueue) {
  {
    Rig r;
    r.mem.store<uint16_t>(kAvail + 2, 200);  // 200 entries ahead of a queue of 8
    EXPECT_FALSE(r.blk->process(r.mem, r.q));
    EXPECT_TRUE(r.q.broken());
    EXPECT_NE(r.q.broken_reason().find("ahead"), std::string::npos);
  }
  {
    Rig r;
    r.make_avail(77);  // head index beyond the queue
    r.blk->process(r.mem, r.q);
    EXPECT_TRUE(r.q.broken());
    EXPECT_EQ(r.used_idx(), 0);
  }
}

TEST(VirtioMmio, RegistersAndFeatureNegotiation) {
  GuestMemory mem(1u << 20);
  int fd = ::memfd_create("disk", MFD_CLOEXEC);
  ASSERT_EQ(::ftruncate(fd, 8192), 0);
  VirtioBlk blk(fd_disk_view(fd, 8192, false), "x");
  int interrupts = 0;
  VirtioMmio dev(mem, blk, [&] { ++interrupts; });
  auto rd = [&](uint64_t off) {
    uint32_t v;
    dev.read(off, reinterpret_cast<uint8_t*>(&v), 4);
    return v;
  };
  auto wr = [&](uint64_t off, uint32_t v) { dev.write(off, reinterpret_cast<uint8_t*>(&v), 4); };
  EXPECT_EQ(rd(0x000), 0x74726976u);
  EXPECT_EQ(rd(0x004), 2u);
  EXPECT_EQ(rd(0x008), 2u);
  uint64_t cap = 0;
  dev.read(0x100, reinterpret_cast<uint8_t*>(&cap), 8);
  EXPECT_EQ(cap, 16u);
  uint8_t b = 0xaa;
  dev.read(0x1000 - 1, &b, 1);  // beyond the config: zero
  EXPECT_EQ(b, 0);
  uint16_t odd = 0xffff;
  dev.read(0x002, reinterpret_cast<uint8_t*>(&odd), 2);  // unaligned/short register access: zero
  EXPECT_EQ(odd, 0);
  wr(0x014, 1);
  EXPECT_EQ(rd(0x010), 1u);  // VERSION_1 in the high half
  // A feature we did not offer makes FEATURES_OK fail.
  wr(0x070, 3);
  wr(0x024, 0);
  wr(0x020, 1u << 28);
  wr(0x024, 1);
  wr(0x020, 1);
  wr(0x070, 3 | 8);
  EXPECT_EQ(rd(0x070) & 8, 0u);
  wr(0x070, 0);  // reset
  wr(0x070, 3);
  wr(0x024, 0);
  wr(0x020, 1u << 9);
  wr(0x024, 1);
  wr(0x020, 1);
  wr(0x070, 3 | 8);
  EXPECT_EQ(rd(0x070) & 8, 8u);
  // A queue whose rings lie outside guest memory cannot be made ready.
  wr(0x030, 0);
  EXPECT_EQ(rd(0x034), 256u);
  wr(0x038, 8);
  wr(0x080, 0xfff00000);
  wr(0x044, 1);
  EXPECT_EQ(rd(0x044), 0u);
  EXPECT_EQ(rd(0x070) & VirtioMmio::kStatusNeedsReset, VirtioMmio::kStatusNeedsReset);
  EXPECT_NE(dev.broken_reason(), "");
  wr(0x070, 0);
  EXPECT_EQ(rd(0x070), 0u);
  EXPECT_EQ(dev.broken_reason(), "");
  // A queue selector beyond the device's queues reads as absent.
  wr(0x030, 5);
  EXPECT_EQ(rd(0x034), 0u);
  dev.notify();  // not DRIVER_OK: nothing happens
  EXPECT_EQ(interrupts, 0);
}
