// Virtio devices in snapshots, without KVM: a virtio-mmio transport's state saved and loaded
// into a new transport goes on where the old one stopped, states that do not fit the device or
// guest memory are refused with the reason, and a copy-on-write disk's writes are saved and
// replayed into private views that leave the image and the saved file alone.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "img2vm/base/digest.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/vm/disk_view.hpp"
#include "img2vm/vm/net_slirp.hpp"
#include "virtio_blk.hpp"
#include "virtio_mmio.hpp"
#include "virtio_net.hpp"

using namespace img2vm;
using namespace img2vm::vm;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t kDesc = 0x1000, kAvail = 0x2000, kUsed = 0x3000, kHdr = 0x4000, kData = 0x5000,
                   kStatus = 0x8000;
constexpr uint16_t kQ = 8;
constexpr uint64_t kDiskSize = 64 * 512;

std::unique_ptr<VirtioBlk> memfd_blk(bool ro = false, uint64_t size = kDiskSize) {
  int fd = ::memfd_create("disk", MFD_CLOEXEC);
  if (fd < 0 || ::ftruncate(fd, off_t(size)) != 0) throw std::runtime_error("memfd");
  return std::make_unique<VirtioBlk>(fd_disk_view(fd, size, ro), "snap");
}

// A virtio-blk device behind its transport, driven through the registers as a driver would.
struct Rig {
  GuestMemory& mem;
  std::unique_ptr<VirtioBlk> blk;
  VirtioMmio mmio;
  int interrupts = 0;

  Rig(GuestMemory& m, std::unique_ptr<VirtioBlk> b)
      : mem(m), blk(std::move(b)), mmio(mem, *blk, [this] { ++interrupts; }) {}
  uint32_t rd(uint64_t off) {
    uint32_t v;
    mmio.read(off, reinterpret_cast<uint8_t*>(&v), 4);
    return v;
  }
  void wr(uint64_t off, uint32_t v) { mmio.write(off, reinterpret_cast<uint8_t*>(&v), 4); }
  void set_up() {
    wr(0x070, 3);
    wr(0x024, 1);
    wr(0x020, 1);  // VERSION_1
    wr(0x070, 3 | 8);
    wr(0x030, 0);
    wr(0x038, kQ);
    wr(0x080, uint32_t(kDesc));
    wr(0x090, uint32_t(kAvail));
    wr(0x0a0, uint32_t(kUsed));
    wr(0x044, 1);
    wr(0x070, 15);
  }
  // Reads sector `sector` into kData through the queue; returns the used index after it.
  uint16_t read_sector(uint64_t sector) {
    mem.store<uint32_t>(kHdr, VirtioBlk::kTypeIn);
    mem.store<uint64_t>(kHdr + 8, sector);
    auto desc = [&](uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
      mem.store<uint64_t>(kDesc + 16 * i, addr);
      mem.store<uint32_t>(kDesc + 16 * i + 8, len);
      mem.store<uint16_t>(kDesc + 16 * i + 12, flags);
      mem.store<uint16_t>(kDesc + 16 * i + 14, next);
    };
    desc(0, kHdr, 16, SplitQueue::kDescNext, 1);
    desc(1, kData, 512, SplitQueue::kDescNext | SplitQueue::kDescWrite, 2);
    desc(2, kStatus, 1, SplitQueue::kDescWrite, 0);
    uint16_t idx = *mem.load<uint16_t>(kAvail + 2);
    mem.store<uint16_t>(kAvail + 4 + 2 * (idx % kQ), 0);
    mem.store<uint16_t>(kAvail + 2, uint16_t(idx + 1));
    wr(0x050, 0);
    return *mem.load<uint16_t>(kUsed + 2);
  }
};

// The message of the Error `f` throws (kind in `kind`), "" if none.
template <typename F>
std::string refusal(F f, ErrorKind* kind = nullptr) {
  try {
    f();
    return "";
  } catch (const Error& e) {
    if (kind) *kind = e.kind();
    return e.what();
  }
}

// A transport's saved state with the header or queue 0 changed by `edit`.
std::vector<uint8_t> edited(std::vector<uint8_t> s,
                            void (*edit)(VirtioMmioState&, VirtioQueueState&)) {
  VirtioMmioState h;
  VirtioQueueState q;
  std::memcpy(&h, s.data(), sizeof h);
  std::memcpy(&q, s.data() + sizeof h, sizeof q);
  edit(h, q);
  std::memcpy(s.data(), &h, sizeof h);
  std::memcpy(s.data() + sizeof h, &q, sizeof q);
  return s;
}

}  // namespace

TEST(VirtioSnapshot, ATransportLoadedFromItsStateGoesOnWhereItStopped) {
  GuestMemory mem(1u << 20);
  Rig a(mem, memfd_blk());
  a.set_up();
  ASSERT_EQ(a.read_sector(3), 1);
  a.wr(0x030, 5);  // a queue selector beyond the queues is state too
  const auto saved = a.mmio.save();
  ASSERT_EQ(saved.size(), sizeof(VirtioMmioState) + sizeof(VirtioQueueState));

  Rig b(mem, memfd_blk());
  b.mmio.load(saved);
  EXPECT_EQ(b.mmio.save(), saved);
  EXPECT_EQ(b.rd(0x070), 15u);
  EXPECT_EQ(b.rd(0x060), 1u);  // the used-buffer interrupt the driver has not acknowledged
  EXPECT_EQ(b.rd(0x034), 0u);  // queue 5: none
  b.wr(0x030, 0);
  EXPECT_EQ(b.rd(0x044), 1u);
  // The second request is the only new one: the device does not take the first again.
  EXPECT_EQ(b.read_sector(4), 2);
  EXPECT_EQ(*mem.load<uint32_t>(kUsed + 4 + 8 * 1), 0u);  // head 0 in used slot 1
  EXPECT_EQ(*mem.load<uint8_t>(kStatus), VirtioBlk::kStatusOk);
  // The pending interrupt is raised again on request (it may not have reached the irqchip).
  b.interrupts = 0;
  b.mmio.raise_pending();
  EXPECT_EQ(b.interrupts, 1);
  b.wr(0x064, 1);
  b.mmio.raise_pending();
  EXPECT_EQ(b.interrupts, 1);
  EXPECT_EQ(b.blk->save_state(), a.blk->save_state());
  EXPECT_NO_THROW(b.blk->load_state(a.blk->save_state()));
}

TEST(VirtioSnapshot, FinishPendingHandlesChainsNotYetNotified) {
  GuestMemory mem(1u << 20);
  Rig a(mem, memfd_blk());
  a.set_up();
  // A chain made available whose notification never arrived (still in the ioeventfd).
  mem.store<uint32_t>(kHdr, VirtioBlk::kTypeIn);
  mem.store<uint64_t>(kHdr + 8, 0);
  ASSERT_EQ(a.read_sector(0), 1);
  mem.store<uint16_t>(kAvail + 4 + 2, 0);
  mem.store<uint16_t>(kAvail + 2, 2);
  EXPECT_EQ(*mem.load<uint16_t>(kUsed + 2), 1);
  a.mmio.finish_pending();
  EXPECT_EQ(*mem.load<uint16_t>(kUsed + 2), 2);
  VirtioQueueState q;
  const auto saved = a.mmio.save();
  std::memcpy(&q, saved.data() + sizeof(VirtioMmioState), sizeof q);
  EXPECT_EQ(q.last_avail, 2);
  EXPECT_EQ(q.used_idx, 2);
}

TEST(VirtioSnapshot, AStateThatDoesNotFitIsRefusedAndChangesNothing) {
  GuestMemory mem(1u << 20);
  Rig a(mem, memfd_blk());
  a.set_up();
  a.read_sector(1);
  const auto saved = a.mmio.save();
  Rig b(mem, memfd_blk());
  ErrorKind kind{};
  auto load = [&](const std::vector<uint8_t>& s) {
    return refusal([&] { b.mmio.load(s); }, &kind);
  };

  EXPECT_EQ(load(edited(saved, [](auto& h, auto&) { h.device_id = 1; })),
            "the snapshot's virtio device has type 1, this one 2");
  EXPECT_EQ(kind, ErrorKind::kUnsupported);
  Rig ro(mem, memfd_blk(true));
  EXPECT_NE(refusal([&] { ro.mmio.load(saved); }, &kind).find("offered features"),
            std::string::npos);
  EXPECT_EQ(kind, ErrorKind::kUnsupported);
  {
    auto two = edited(saved, [](auto& h, auto&) { h.num_queues = 2; });
    two.resize(two.size() + sizeof(VirtioQueueState));
    EXPECT_EQ(load(two), "the snapshot's virtio device has 2 queues, this one 1");
    EXPECT_EQ(kind, ErrorKind::kUnsupported);
  }
  EXPECT_EQ(load(edited(saved, [](auto&, auto& q) { q.size = 6; })),
            "virtio-mmio state: queue 0: size 6 is not a power of two up to 256");
  EXPECT_EQ(kind, ErrorKind::kIntegrity);
  EXPECT_EQ(load(edited(saved, [](auto&, auto& q) { q.size = 512; })),
            "virtio-mmio state: queue 0: size 512 is not a power of two up to 256");
  EXPECT_EQ(load(edited(saved, [](auto&, auto& q) { q.desc_addr = 0xfff00000; })),
            "virtio-mmio state: queue 0: descriptor table outside guest memory");
  EXPECT_EQ(kind, ErrorKind::kIntegrity);
  EXPECT_EQ(load(edited(saved, [](auto&, auto& q) { q.used_addr = (1u << 20) - 8; })),
            "virtio-mmio state: queue 0: used ring outside guest memory");
  EXPECT_EQ(load(edited(saved, [](auto&, auto& q) { q.ready = 2; })),
            "virtio-mmio state: queue 0: flags out of range");
  EXPECT_EQ(load(edited(saved, [](auto& h, auto&) { h.status = 0x100; })),
            "virtio-mmio state: device status 0x100");
  EXPECT_EQ(load(edited(saved, [](auto& h, auto&) { h.interrupt_status = 4; })),
            "virtio-mmio state: interrupt status 0x4");
  EXPECT_EQ(load(edited(saved, [](auto& h, auto&) { h.driver_features |= 1u << 28; })),
            "virtio-mmio state: driver features 0x110000000 beyond the offered ones");
  EXPECT_EQ(load(edited(saved, [](auto& h, auto&) { std::memset(h.broken, 'x', 120); })),
            "virtio-mmio state: the broken reason is not terminated");
  auto cut = saved;
  cut.pop_back();
  EXPECT_EQ(load(cut), "virtio-mmio state: 199 bytes for 1 queues");
  EXPECT_EQ(kind, ErrorKind::kIntegrity);
  EXPECT_EQ(load({}), "virtio-mmio state: 0 bytes");
  // Nothing was taken from the refused states.
  EXPECT_EQ(b.rd(0x070), 0u);
  EXPECT_EQ(b.rd(0x044), 0u);
}

TEST(VirtioSnapshot, VirtioBlkRefusesAnotherCapacityOrWritability) {
  auto saved = memfd_blk()->save_state();
  ErrorKind kind{};
  auto bigger = memfd_blk(false, 2 * kDiskSize);
  EXPECT_EQ(refusal([&] { bigger->load_state(saved); }, &kind),
            "the snapshot's disk had 64 sectors, this one 128");
  EXPECT_EQ(kind, ErrorKind::kUnsupported);
  auto ro = memfd_blk(true);
  EXPECT_EQ(refusal([&] { ro->load_state(saved); }, &kind),
            "the snapshot's disk was writable, this one is read-only");
  EXPECT_EQ(kind, ErrorKind::kUnsupported);
  saved.push_back(0);
  EXPECT_EQ(refusal([&] { memfd_blk()->load_state(saved); }, &kind),
            "virtio-blk state: 17 bytes, not 16");
  EXPECT_EQ(kind, ErrorKind::kIntegrity);
}

// The NIC's transport while a snapshot is written (its network thread may deliver at any time):
// held, a notification handles nothing, so guest memory and the queues stay as saved; released,
// the next one handles what came meanwhile.
TEST(VirtioSnapshot, AHeldTransportHandlesNothingUntilReleased) {
  GuestMemory mem(1u << 20);
  Rig a(mem, memfd_blk());
  a.set_up();
  ASSERT_EQ(a.read_sector(1), 1);
  a.mmio.hold();
  EXPECT_EQ(a.read_sector(2), 1) << "a held transport handled a chain";
  a.mmio.finish_pending();
  EXPECT_EQ(*mem.load<uint16_t>(kUsed + 2), 1);
  VirtioQueueState q;
  auto saved = a.mmio.save();
  std::memcpy(&q, saved.data() + sizeof(VirtioMmioState), sizeof q);
  EXPECT_EQ(q.last_avail, 1);
  EXPECT_EQ(q.used_idx, 1);
  a.mmio.release();
  EXPECT_EQ(*mem.load<uint16_t>(kUsed + 2), 1);
  a.mmio.notify();
  EXPECT_EQ(*mem.load<uint16_t>(kUsed + 2), 2);
}

// A transport loaded from a held one's state handles the chain made available while it was
// held at its first notification (a restored VM's NIC gets one when it starts).
TEST(VirtioSnapshot, ChainsMadeAvailableWhileHeldAreHandledAfterARestore) {
  GuestMemory mem(1u << 20);
  Rig a(mem, memfd_blk());
  a.set_up();
  a.mmio.hold();
  ASSERT_EQ(a.read_sector(5), 0);
  auto saved = a.mmio.save();
  Rig b(mem, memfd_blk());
  b.mmio.load(saved);
  b.mmio.notify();
  EXPECT_EQ(*mem.load<uint16_t>(kUsed + 2), 1);
  EXPECT_EQ(*mem.load<uint8_t>(kStatus), VirtioBlk::kStatusOk);
}

TEST(VirtioSnapshot, VirtioNetNeedsTheSameMtuButMayHaveAnotherMac) {
  SlirpBackend b1(UserNetConfig{}, 1500), b2(UserNetConfig{}, 1500), b3(UserNetConfig{}, 1400);
  VirtioNet saved_nic(b1, {0x52, 0x54, 0x00, 1, 2, 3}, 1500);
  auto saved = saved_nic.save_state();
  VirtioNet other_mac(b2, {0x52, 0x54, 0x00, 4, 5, 6}, 1500);
  EXPECT_EQ(refusal([&] { other_mac.load_state(saved); }), "");
  EXPECT_EQ(other_mac.config()[3], 4) << "the loaded NIC's MAC is the one it was made with";
  ErrorKind kind{};
  VirtioNet other_mtu(b3, {0x52, 0x54, 0x00, 1, 2, 3}, 1400);
  EXPECT_EQ(refusal([&] { other_mtu.load_state(saved); }, &kind),
            "the snapshot's NIC had MTU 1500, this one 1400");
  EXPECT_EQ(kind, ErrorKind::kUnsupported);
  saved.pop_back();
  EXPECT_EQ(refusal([&] { other_mac.load_state(saved); }, &kind),
            "virtio-net state: 15 bytes, not 16");
  EXPECT_EQ(kind, ErrorKind::kIntegrity);
}

namespace {

std::string bytes_of(DiskView& v) {
  std::string s(v.size(), '\0');
  EXPECT_TRUE(v.read(reinterpret_cast<uint8_t*>(s.data()), s.size(), 0));
  return s;
}
bool put(DiskView& v, std::string_view data, uint64_t off) {
  return v.write(reinterpret_cast<const uint8_t*>(data.data()), data.size(), off);
}

}  // namespace

TEST(DiskSnapshot, SavedWritesComeBackInPrivateViewsOfTheImage) {
  TempDir dir("img2vm-disk-snap");
  const fs::path img = dir.path() / "root.img", saved = dir.path() / "disk-0";
  std::string base(2048 * 512 + 100, 'b');  // a partial last sector too
  for (size_t i = 0; i < base.size(); i += 97) base[i] = char('A' + i % 26);
  write_file_atomic(img, base);
  auto orig = open_disk_view(img, DiskMode::kCopyOnWrite);
  ASSERT_TRUE(put(*orig, std::string(512, '\0'), 0));  // a written sector of zeros
  ASSERT_TRUE(put(*orig, "unaligned", 3 * 512 + 7));
  ASSERT_TRUE(put(*orig, std::string(3000, 'w'), 10 * 512));
  ASSERT_TRUE(put(*orig, "end", base.size() - 3));
  orig->save_writes(saved);
  const std::string want = bytes_of(*orig);
  ASSERT_TRUE(put(*orig, "after the save", 500 * 512));  // not in the saved file
  const std::string saved_digest = sha256_file(saved).str();
  // Sparse: the data region holds only the written sectors.
  struct stat st {};
  ASSERT_EQ(::stat(saved.c_str(), &st), 0);
  EXPECT_LT(uint64_t(st.st_blocks) * 512, 64u * 1024);

  auto a = open_disk_view_with_writes(img, saved);
  auto b = open_disk_view_with_writes(img, saved);
  EXPECT_EQ(bytes_of(*a), want);
  ASSERT_TRUE(put(*a, "only in a", 20 * 512));
  EXPECT_EQ(bytes_of(*b), want);
  EXPECT_EQ(bytes_of(*a).substr(20 * 512, 9), "only in a");
  EXPECT_EQ(read_file(img), base);
  EXPECT_EQ(sha256_file(saved).str(), saved_digest);
  // A restored view's own snapshot holds the old writes and the new.
  a->save_writes(dir.path() / "disk-again");
  auto c = open_disk_view_with_writes(img, dir.path() / "disk-again");
  EXPECT_EQ(bytes_of(*c), bytes_of(*a));
}

TEST(DiskSnapshot, OnlyCopyOnWriteViewsSaveWritesAndDamagedFilesAreRefused) {
  TempDir dir("img2vm-disk-snap");
  const fs::path img = dir.path() / "d.img", saved = dir.path() / "disk-0";
  write_file_atomic(img, std::string(8192, 'x'));
  ErrorKind kind{};
  for (DiskMode m : {DiskMode::kReadOnly, DiskMode::kReadWrite}) {
    auto v = open_disk_view(img, m);
    EXPECT_NE(refusal([&] { v->save_writes(saved); }, &kind).find("only copy-on-write disks"),
              std::string::npos);
    EXPECT_EQ(kind, ErrorKind::kUnsupported);
  }
  auto v = open_disk_view(img, DiskMode::kCopyOnWrite);
  ASSERT_TRUE(put(*v, std::string(512, 'y'), 512));
  v->save_writes(saved);
  const std::string good = read_file(saved);
  auto open_with = [&](const std::string& bytes, const fs::path& image) {
    write_file_atomic(dir.path() / "bad", bytes);
    return refusal([&] { open_disk_view_with_writes(image, dir.path() / "bad"); }, &kind);
  };
  const std::string bad = (dir.path() / "bad").string();
  EXPECT_EQ(open_with("IMG2VMXX" + good.substr(8), img),
            "saved disk writes " + bad + ": no IMG2VMDW header");
  EXPECT_EQ(kind, ErrorKind::kIntegrity);
  EXPECT_EQ(open_with(good.substr(0, good.size() - 512), img),
            "saved disk writes " + bad + ": " + std::to_string(good.size() - 512) + " bytes, not " +
                std::to_string(good.size()));
  EXPECT_EQ(kind, ErrorKind::kIntegrity);
  {
    std::string past = good;
    past[4096] = char(0xff);  // sectors 0-7 of a 16-sector disk: fine
    past[4097] = char(0xff);  // 8-15: fine
    past[4098] = 1;           // sector 16: past the end
    EXPECT_EQ(open_with(past, img), "saved disk writes " + bad + ": sectors past the end");
  }
  const fs::path big = dir.path() / "big.img";
  write_file_atomic(big, std::string(16384, 'x'));
  EXPECT_EQ(open_with(good, big),
            "saved disk writes " + bad + " are of a disk of 8192 bytes, not 16384");
  EXPECT_EQ(kind, ErrorKind::kInvalidArgument);
  EXPECT_NE(
      refusal([&] { open_disk_view_with_writes(img, dir.path() / "missing"); }).find("missing"),
      std::string::npos);
}
