// virtio-fs over vhost-user without KVM: the test is the guest's driver (virtio-mmio registers,
// split rings in shared guest memory) and Debian's virtiofsd (qemu 7.2) is the backend, serving a
// temporary directory. FUSE requests go into the request queue, the kick eventfd wakes
// virtiofsd, its call eventfd says the reply is there. Also: a killed virtiofsd, and a fake
// backend (a socketpair) sending malformed replies.
#include "virtio_fs.hpp"

#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>
#include <vector>

#include "guest_memory.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "process.hpp"
#include "vhost_user.hpp"
#include "virtio_fs_driver.hpp"
#include "virtio_mmio.hpp"

using namespace img2vm;
using namespace img2vm::vm;
using namespace img2vm::vm::fs_test;
using namespace std::chrono_literals;

namespace {

constexpr const char* kVirtiofsd = "/usr/lib/qemu/virtiofsd";

// Connects to virtiofsd's socket once it listens (bounded: 10 s).
UniqueFd connect_when_listening(const std::filesystem::path& path,
                                img2vm::testing::ChildProcess& proc) {
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (!proc.running()) throw Error(ErrorKind::kIo, "virtiofsd exited");
    try {
      auto fe = VhostUserFrontend::connect(path.string(), "probe");
      return UniqueFd(::dup(fe.fd()));
    } catch (const Error&) {
      std::this_thread::sleep_for(10ms);  // not yet listening: poll the condition again
    }
  }
  throw Error(ErrorKind::kIo, "virtiofsd did not listen on " + path.string());
}

class VirtioFsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access(kVirtiofsd, X_OK) != 0) GTEST_SKIP() << kVirtiofsd << " not installed";
    // virtiofsd's default sandbox (namespaces and pivot_root into the shared directory) needs
    // root or unprivileged user namespaces around it; this suite runs it as root with it on.
    if (::geteuid() != 0) GTEST_SKIP() << "virtiofsd's namespace sandbox needs root here";
    std::filesystem::create_directory(share());
    {
      std::ofstream f(share() / "hello.txt", std::ios::binary);
      f << std::string(1234, 'x');
    }
    ASSERT_EQ(::chmod((share() / "hello.txt").c_str(), 0640), 0);
    proc_ = img2vm::testing::ChildProcess(
        {kVirtiofsd, "--socket-path=" + sock().string(), "-o", "source=" + share().string(), "-o",
         "cache=none", "-o", "sandbox=" + sandbox()},
        dir_.path() / "virtiofsd.log");
    call_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    ASSERT_TRUE(call_);
  }
  // The default sandbox (namespaces) forks the serving process; killing it is asynchronous to
  // the parent's exit. The kill tests use chroot, one process: once it is reaped, its end of
  // the socket is closed.
  virtual std::string sandbox() const { return "namespace"; }
  std::filesystem::path share() const { return dir_.path() / "share"; }
  std::filesystem::path sock() const { return dir_.path() / "vfs.sock"; }

  std::unique_ptr<VirtioFs> make_device(std::chrono::milliseconds timeout = 5s) {
    UniqueFd s = connect_when_listening(sock(), proc_);
    auto dev =
        std::make_unique<VirtioFs>(VhostUserFrontend(std::move(s), "virtiofsd", timeout), "share");
    dev->set_call_fd(call_.get());
    return dev;
  }

  // A device over `mem`, its transport, and the driver with features and queues negotiated.
  struct Guest {
    std::unique_ptr<VirtioFs> dev;
    std::unique_ptr<VirtioMmio> mmio;
    std::unique_ptr<Driver> drv;
  };
  Guest negotiated_guest(GuestMemory& mem, std::chrono::milliseconds timeout = 5s) {
    Guest g;
    g.dev = make_device(timeout);
    g.mmio = std::make_unique<VirtioMmio>(mem, *g.dev, [] {});
    g.drv = std::make_unique<Driver>(Driver{mem, *g.mmio});
    g.drv->negotiate();
    return g;
  }

  TempDir dir_{"virtio-fs-test"};
  img2vm::testing::ChildProcess proc_;
  UniqueFd call_;
  GuestMemory mem_{4 << 20, GuestMemory::Pages::kNormal, GuestMemory::Sharing::kShared};
};

TEST_F(VirtioFsTest, RealVirtiofsdAnswersInitLookupAndGetattrThroughTheQueues) {
  auto dev = make_device();
  VirtioMmio mmio(mem_, *dev, [] {});
  Driver drv{mem_, mmio};
  EXPECT_EQ(drv.rd(0x08), VirtioFs::kDeviceId);
  // Config space: the tag, NUL-padded to 36 bytes, then one request queue.
  char tag[37] = {};
  for (unsigned i = 0; i < 36; ++i) mmio.read(0x100 + i, reinterpret_cast<uint8_t*>(tag + i), 1);
  EXPECT_STREQ(tag, "share");
  EXPECT_EQ(drv.rd(0x100 + 36), 1u);
  // Only what virtiofsd offers and we pass through: VERSION_1 at least, never bit 30.
  EXPECT_TRUE(dev->features() & kVirtioFVersion1);
  EXPECT_FALSE(dev->features() & vhost_user::kFProtocolFeatures);
  EXPECT_TRUE(drv.negotiate() & VirtioMmio::kStatusFeaturesOk);
  drv.driver_ok();
  ASSERT_EQ(mmio.broken_reason(), "");
  ASSERT_FALSE(mmio.status() & VirtioMmio::kStatusNeedsReset);
  // The backend's interrupts reach the guest through the irqfd: the used-buffer bit shows.
  EXPECT_EQ(drv.rd(0x60) & 1, 1u);

  auto kick = [&](unsigned q) {
    uint64_t one = 1;
    ASSERT_EQ(::write(dev->kick_fd(q), &one, sizeof one), 8);
  };
  struct {
    uint32_t major, minor, max_readahead, flags;
  } init{7, 31, 0x20000, 0};
  drv.post(1, fuse_request(FUSE_INIT, 1, 0, &init, sizeof init), 4096);
  kick(1);
  auto r = drv.wait_reply(1, call_.get());
  auto io = reply_body<fuse_init_out>(r, 1);
  EXPECT_EQ(io.major, 7u);

  const char name[] = "hello.txt";
  drv.post(1, fuse_request(FUSE_LOOKUP, 2, FUSE_ROOT_ID, name, sizeof name), 4096);
  kick(1);
  auto entry = reply_body<fuse_entry_out>(drv.wait_reply(1, call_.get()), 2);
  EXPECT_EQ(entry.attr.size, 1234u);
  EXPECT_EQ(entry.attr.mode, S_IFREG | 0640u);
  ASSERT_NE(entry.nodeid, 0u);

  fuse_getattr_in ga{};
  // A QueueNotify write that reaches the transport (no ioeventfd) is passed on as a kick.
  drv.post(1, fuse_request(FUSE_GETATTR, 3, entry.nodeid, &ga, sizeof ga), 4096);
  drv.wr(0x50, 1);
  auto attr = reply_body<fuse_attr_out>(drv.wait_reply(1, call_.get()), 3);
  EXPECT_EQ(attr.attr.size, 1234u);
  EXPECT_EQ(attr.attr.mode, S_IFREG | 0640u);
  struct stat st {};
  ASSERT_EQ(::stat((share() / "hello.txt").c_str(), &st), 0);
  EXPECT_EQ(attr.attr.ino, st.st_ino);

  // A reset stops the rings in the backend (GET_VRING_BASE answered), and the device can be
  // started again.
  drv.wr(0x70, 0);
  EXPECT_EQ(dev->reset_error(), "");
  drv.negotiate();
  drv.driver_ok();
  EXPECT_EQ(mmio.broken_reason(), "");
}

class VirtioFsKillTest : public VirtioFsTest {
  std::string sandbox() const override { return "chroot"; }
};

TEST_F(VirtioFsKillTest, KilledVirtiofsdIsAnErrorNotAHang) {
  auto g = negotiated_guest(mem_, 2s);
  auto& mmio = *g.mmio;
  auto& drv = *g.drv;
  proc_.kill_now();
  drv.driver_ok();
  EXPECT_TRUE(mmio.status() & VirtioMmio::kStatusNeedsReset);
  EXPECT_NE(mmio.broken_reason().find("virtiofsd: SET_FEATURES"), std::string::npos)
      << mmio.broken_reason();
  // The configuration-change interrupt tells the driver to look.
  EXPECT_EQ(drv.rd(0x60) & 2, 2u);
}

TEST_F(VirtioFsKillTest, KilledVirtiofsdAfterStartMakesTheResetReportIt) {
  auto g = negotiated_guest(mem_, 2s);
  auto& mmio = *g.mmio;
  auto& drv = *g.drv;
  auto& dev = g.dev;
  drv.driver_ok();
  ASSERT_EQ(mmio.broken_reason(), "");
  proc_.kill_now();
  drv.wr(0x70, 0);
  EXPECT_NE(dev->reset_error().find("GET_VRING_BASE"), std::string::npos) << dev->reset_error();
  drv.negotiate();
  drv.driver_ok();
  EXPECT_TRUE(mmio.status() & VirtioMmio::kStatusNeedsReset);
}

TEST_F(VirtioFsTest, PrivateGuestMemoryCannotBeHandedOver) {
  GuestMemory priv(4 << 20);
  EXPECT_EQ(priv.fd(), -1);
  auto g = negotiated_guest(priv);
  g.drv->driver_ok();
  EXPECT_NE(g.mmio->broken_reason().find("not shared"), std::string::npos)
      << g.mmio->broken_reason();
}

TEST(GuestMemoryShared, TheMemfdShowsTheGuestsBytes) {
  GuestMemory mem(1 << 20, GuestMemory::Pages::kNormal, GuestMemory::Sharing::kShared);
  ASSERT_GE(mem.fd(), 0);
  ASSERT_TRUE(mem.store<uint64_t>(0x1234, 0x1122334455667788ull));
  void* p = ::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, mem.fd(), 0);
  ASSERT_NE(p, MAP_FAILED);
  uint64_t v;
  std::memcpy(&v, static_cast<uint8_t*>(p) + 0x1234, sizeof v);
  EXPECT_EQ(v, 0x1122334455667788ull);
  // And the other way round: what the backend writes, the guest sees.
  std::memcpy(static_cast<uint8_t*>(p) + 0x2000, &v, sizeof v);
  EXPECT_EQ(*mem.load<uint64_t>(0x2000), v);
  ::munmap(p, 1 << 20);
}

// A backend on the other end of a socketpair whose replies are written in advance.
struct FakeBackend {
  UniqueFd ours, theirs;
  FakeBackend() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw_errno("socketpair");
    ours.reset(sv[0]);
    theirs.reset(sv[1]);
  }
  void reply(uint32_t request, uint32_t flags, std::vector<uint8_t> payload) {
    std::vector<uint8_t> m;
    append(m, request);
    append(m, flags);
    append(m, uint32_t(payload.size()));
    m.resize(12 + payload.size());
    if (!payload.empty()) std::memcpy(m.data() + 12, payload.data(), payload.size());
    ASSERT_EQ(::write(theirs.get(), m.data(), m.size()), ssize_t(m.size()));
  }
  static std::vector<uint8_t> u64(uint64_t v) {
    std::vector<uint8_t> p;
    append(p, v);
    return p;
  }
  // The error the handshake ends with.
  std::string handshake_error() {
    VhostUserFrontend fe(std::move(ours), "fake", 300ms);
    try {
      fe.handshake();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
};

constexpr uint32_t kReply = vhost_user::kVersion | vhost_user::kFlagReply;

TEST(VhostUserFrontend, AWellFormedHandshakeSucceeds) {
  FakeBackend b;
  b.reply(vhost_user::kGetFeatures, kReply, FakeBackend::u64(kVirtioFVersion1 | (1ull << 29)));
  VhostUserFrontend fe(std::move(b.ours), "fake", 300ms);
  EXPECT_EQ(fe.handshake(), kVirtioFVersion1 | (1ull << 29));
}

TEST(VhostUserFrontend, AReplyToAnotherRequestIsAnError) {
  FakeBackend b;
  b.reply(vhost_user::kGetProtocolFeatures, kReply, FakeBackend::u64(kVirtioFVersion1));
  EXPECT_NE(b.handshake_error().find("fake: GET_FEATURES: the reply answers request 15"),
            std::string::npos);
}

TEST(VhostUserFrontend, AWrongPayloadSizeIsAnError) {
  FakeBackend b;
  b.reply(vhost_user::kGetFeatures, kReply, std::vector<uint8_t>(4096, 0xff));
  EXPECT_NE(b.handshake_error().find("reply payload of 4096 bytes"), std::string::npos);
}

TEST(VhostUserFrontend, AReplyWithoutTheReplyFlagIsAnError) {
  FakeBackend b;
  b.reply(vhost_user::kGetFeatures, vhost_user::kVersion, FakeBackend::u64(0));
  EXPECT_NE(b.handshake_error().find("bad reply flags"), std::string::npos);
}

TEST(VhostUserFrontend, ATruncatedReplyAndAClosedBackendAreErrors) {
  FakeBackend b;
  const uint32_t half[2] = {vhost_user::kGetFeatures, kReply};
  ASSERT_EQ(::write(b.theirs.get(), half, sizeof half), 8);
  ::shutdown(b.theirs.get(), SHUT_WR);
  EXPECT_NE(b.handshake_error().find("closed the connection"), std::string::npos);
  FakeBackend c;
  c.theirs.reset();
  std::string e = c.handshake_error();
  EXPECT_NE(e.find("fake: SET_OWNER: cannot send"), std::string::npos) << e;
}

TEST(VhostUserFrontend, ASilentBackendTimesOut) {
  FakeBackend b;
  EXPECT_NE(b.handshake_error().find("GET_FEATURES: no reply from the backend (timed out)"),
            std::string::npos);
}

TEST(VhostUserFrontend, ARefusedAckAndAWrongRingInGetVringBaseAreErrors) {
  FakeBackend b;
  b.reply(vhost_user::kGetFeatures, kReply,
          FakeBackend::u64(kVirtioFVersion1 | vhost_user::kFProtocolFeatures));
  b.reply(vhost_user::kGetProtocolFeatures, kReply,
          FakeBackend::u64(vhost_user::kProtocolFReplyAck));
  b.reply(vhost_user::kSetFeatures, kReply, FakeBackend::u64(1));  // refused
  VhostUserFrontend fe(std::move(b.ours), "fake", 300ms);
  EXPECT_EQ(fe.handshake(), kVirtioFVersion1);
  EXPECT_EQ(fe.protocol_features(), vhost_user::kProtocolFReplyAck);
  try {
    fe.set_features(kVirtioFVersion1);
    ADD_FAILURE() << "a refused SET_FEATURES was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("refused it (status 1)"), std::string::npos);
  }
  // The connection stays broken: later calls fail with the same error, without I/O.
  EXPECT_THROW(fe.set_vring_num(0, 8), Error);

  FakeBackend c;
  const uint32_t state[2] = {3, 7};  // ring 3, not 0
  std::vector<uint8_t> p(8);
  std::memcpy(p.data(), state, 8);
  c.reply(vhost_user::kGetVringBase, kReply, p);
  VhostUserFrontend fe2(std::move(c.ours), "fake", 300ms);
  try {
    fe2.get_vring_base(0);
    ADD_FAILURE() << "a reply for another ring was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the reply is for ring 3"), std::string::npos);
  }
}

}  // namespace
