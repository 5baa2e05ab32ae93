// runtime::Virtiofsd with Debian's virtiofsd: started on a temporary directory, spoken to
// through the VMM's own vhost-user device (the test as the guest's driver, no KVM), read-only
// shares refused on the host side, clear errors for what is missing, nothing left running.
#include "img2vm/runtime/virtiofsd.hpp"

#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/runtime/machine.hpp"
#include "img2vm/runtime/mounts.hpp"
#include "img2vm/runtime/volumes.hpp"
#include "vhost_user.hpp"
#include "virtio_fs.hpp"
#include "virtio_fs_driver.hpp"

using namespace img2vm;
using namespace img2vm::vm;
using namespace img2vm::vm::fs_test;
using runtime::Virtiofsd;
using runtime::VirtiofsdOptions;

namespace {

constexpr const char* kVirtiofsd = "/usr/lib/qemu/virtiofsd";
// As another user than root, virtiofsd runs in a user namespace, which RootlessInAUserNamespace
// covers from root.
constexpr const char* kRootOnly = "runs virtiofsd as root";

// A guest's virtio-fs driver over a Virtiofsd's socket, FUSE initialised.
struct Session {
  UniqueFd call{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
  GuestMemory mem{4 << 20, GuestMemory::Pages::kNormal, GuestMemory::Sharing::kShared};
  std::unique_ptr<VirtioFs> dev;
  std::unique_ptr<VirtioMmio> mmio;
  std::unique_ptr<Driver> drv;
  uint64_t unique = 0;

  explicit Session(int socket_fd) {
    dev = std::make_unique<VirtioFs>(VhostUserFrontend(UniqueFd(::dup(socket_fd)), "virtiofsd"),
                                     "share");
    dev->set_call_fd(call.get());
    mmio = std::make_unique<VirtioMmio>(mem, *dev, [] {});
    drv = std::make_unique<Driver>(Driver{mem, *mmio});
    drv->negotiate();
    drv->driver_ok();
    EXPECT_EQ(mmio->broken_reason(), "");
    struct {
      uint32_t major, minor, max_readahead, flags;
    } init{7, 31, 0x20000, 0};
    EXPECT_EQ(ok<fuse_init_out>(send(FUSE_INIT, 0, &init, sizeof init)).major, 7u);
  }
  template <class T>
  T ok(const std::vector<uint8_t>& reply) {
    return reply_body<T>(reply, unique);
  }
  int32_t error(const std::vector<uint8_t>& reply) { return reply_error(reply, unique); }
  std::vector<uint8_t> send(uint32_t opcode, uint64_t node, const void* body, size_t len) {
    drv->post(1, fuse_request(opcode, ++unique, node, body, len), 4096);
    uint64_t one = 1;
    EXPECT_EQ(::write(dev->kick_fd(1), &one, sizeof one), 8);
    return drv->wait_reply(1, call.get());
  }
  // A body: a fixed struct followed by a NUL-terminated name.
  template <class T>
  std::vector<uint8_t> named(const T& head, const std::string& name) {
    std::vector<uint8_t> b(sizeof head + name.size() + 1, 0);
    std::memcpy(b.data(), &head, sizeof head);
    std::memcpy(b.data() + sizeof head, name.data(), name.size());
    return b;
  }
  fuse_entry_out lookup(const std::string& name) {
    std::vector<uint8_t> n(name.begin(), name.end());
    n.push_back(0);
    return ok<fuse_entry_out>(send(FUSE_LOOKUP, FUSE_ROOT_ID, n.data(), n.size()));
  }
  int32_t mkdir(const std::string& name) {
    fuse_mkdir_in in{};
    in.mode = 0755;
    auto b = named(in, name);
    return error(send(FUSE_MKDIR, FUSE_ROOT_ID, b.data(), b.size()));
  }
  int32_t create(const std::string& name) {
    fuse_create_in in{};
    in.flags = O_WRONLY | O_CREAT;
    in.mode = S_IFREG | 0644;
    auto b = named(in, name);
    return error(send(FUSE_CREATE, FUSE_ROOT_ID, b.data(), b.size()));
  }
  // Opens `node` for writing and writes `data` at 0: 0, or the first error.
  int32_t write(uint64_t node, const std::string& data) {
    fuse_open_in oi{};
    oi.flags = O_WRONLY;
    auto r = send(FUSE_OPEN, node, &oi, sizeof oi);
    if (int32_t e = reply_error(r, unique); e != 0) return e;
    fuse_open_out oo = reply_body<fuse_open_out>(r, unique);
    fuse_write_in wi{};
    wi.fh = oo.fh;
    wi.size = uint32_t(data.size());
    std::vector<uint8_t> b(sizeof wi + data.size());
    std::memcpy(b.data(), &wi, sizeof wi);
    std::memcpy(b.data() + sizeof wi, data.data(), data.size());
    auto w = send(FUSE_WRITE, node, b.data(), b.size());
    if (int32_t e = reply_error(w, unique); e != 0) return e;
    EXPECT_EQ(reply_body<fuse_write_out>(w, unique).size, data.size());
    return 0;
  }
};

class VirtiofsdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access(kVirtiofsd, X_OK) != 0) GTEST_SKIP() << kVirtiofsd << " not installed";
    // A comma in the name: virtiofsd's -o source= must be escaped.
    std::filesystem::create_directory(share());
    std::ofstream(share() / "hello.txt", std::ios::binary) << std::string(1234, 'x');
  }
  std::filesystem::path share() const { return dir_.path() / "sha,re"; }
  VirtiofsdOptions options(bool ro) const {
    VirtiofsdOptions o;
    o.source = share();
    o.read_only = ro;
    return o;
  }
  TempDir dir_{"virtiofsd-test"};
};

TEST_F(VirtiofsdTest, ServesTheDirectoryThroughTheVhostUserDevice) {
  if (::geteuid() != 0) GTEST_SKIP() << kRootOnly;
  Virtiofsd v = Virtiofsd::start(options(false));
  EXPECT_GT(v.pid(), 0);
  EXPECT_EQ(v.source(), std::filesystem::canonical(share()));
  Session s(v.socket_fd());
  fuse_entry_out e = s.lookup("hello.txt");
  EXPECT_EQ(e.attr.size, 1234u);
  fuse_getattr_in ga{};
  auto attr = s.ok<fuse_attr_out>(s.send(FUSE_GETATTR, e.nodeid, &ga, sizeof ga));
  EXPECT_EQ(attr.attr.size, 1234u);
  struct stat st {};
  ASSERT_EQ(::stat((share() / "hello.txt").c_str(), &st), 0);
  EXPECT_EQ(attr.attr.ino, st.st_ino);
  // Read-write: the guest's changes reach the host directory.
  EXPECT_EQ(s.mkdir("made"), 0);
  EXPECT_TRUE(std::filesystem::is_directory(share() / "made"));
  EXPECT_EQ(s.create("new.txt"), 0);
  EXPECT_TRUE(std::filesystem::exists(share() / "new.txt"));
  EXPECT_EQ(s.write(e.nodeid, "written"), 0);
  EXPECT_EQ(read_file(share() / "hello.txt").substr(0, 7), "written");
}

TEST_F(VirtiofsdTest, AReadOnlyShareIsRefusedOnTheHostSide) {
  if (::geteuid() != 0) GTEST_SKIP() << kRootOnly;
  Virtiofsd v = Virtiofsd::start(options(true));
  Session s(v.socket_fd());
  fuse_entry_out e = s.lookup("hello.txt");
  EXPECT_EQ(e.attr.size, 1234u);
  EXPECT_EQ(s.mkdir("made"), -EROFS);
  EXPECT_EQ(s.create("new.txt"), -EROFS);
  EXPECT_EQ(s.write(e.nodeid, "written"), -EROFS);
  EXPECT_FALSE(std::filesystem::exists(share() / "made"));
  EXPECT_FALSE(std::filesystem::exists(share() / "new.txt"));
  EXPECT_EQ(read_file(share() / "hello.txt"), std::string(1234, 'x'));
  // Only virtiofsd's view is read-only: the host's own stays writable.
  EXPECT_EQ(::access(share().c_str(), W_OK), 0);
}

TEST_F(VirtiofsdTest, NothingIsLeftRunningAfterDestruction) {
  if (::geteuid() != 0) GTEST_SKIP() << kRootOnly;
  UniqueFd peer;
  pid_t pid = 0;
  {
    Virtiofsd v = Virtiofsd::start(options(false));
    pid = v.pid();
    peer.reset(::dup(v.socket_fd()));
  }
  // Reaped: the process id is gone.
  EXPECT_EQ(::kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
  // And the serving process (virtiofsd forks into its sandbox) has closed its end.
  pollfd p{peer.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1) << "virtiofsd's end of the socket still open after 10 s";
  char c;
  EXPECT_EQ(::recv(peer.get(), &c, 1, MSG_DONTWAIT), 0);
}

TEST_F(VirtiofsdTest, AMissingOrNonDirectorySourceIsAClearError) {
  VirtiofsdOptions o = options(false);
  o.source = dir_.path() / "nope";
  try {
    Virtiofsd::start(o);
    ADD_FAILURE() << "a missing source was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_EQ(std::string(e.what()), "bind source path does not exist: " + o.source.string());
  }
  o.source = share() / "hello.txt";
  try {
    Virtiofsd::start(o);
    ADD_FAILURE() << "a file as the source was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("not a directory"), std::string::npos) << e.what();
  }
}

TEST_F(VirtiofsdTest, AMissingVirtiofsdIsAClearError) {
  VirtiofsdOptions o = options(false);
  o.program = dir_.path() / "no-virtiofsd";
  try {
    Virtiofsd::start(o);
    ADD_FAILURE() << "a missing virtiofsd was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("no-virtiofsd does not exist"), std::string::npos)
        << e.what();
  }
  ::setenv("IMG2VM_VIRTIOFSD", (dir_.path() / "gone").c_str(), 1);
  try {
    runtime::find_virtiofsd();
    ADD_FAILURE() << "a missing $IMG2VM_VIRTIOFSD was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(from IMG2VM_VIRTIOFSD)"), std::string::npos) << e.what();
  }
  ::unsetenv("IMG2VM_VIRTIOFSD");
  EXPECT_EQ(runtime::find_virtiofsd(), kVirtiofsd);
}

TEST_F(VirtiofsdTest, AVirtiofsdThatFailsIsReportedWithItsLastLines) {
  if (::geteuid() != 0) GTEST_SKIP() << kRootOnly;
  const auto fake = dir_.path() / "fake-virtiofsd";
  std::ofstream(fake) << "#!/bin/sh\necho 'fake: cannot serve this' >&2\nexit 1\n";
  ASSERT_EQ(::chmod(fake.c_str(), 0755), 0);
  VirtiofsdOptions o = options(false);
  o.program = fake;
  try {
    Virtiofsd::start(o);
    ADD_FAILURE() << "a failing virtiofsd was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("failed to start: it did not answer"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("fake: cannot serve this"), std::string::npos) << e.what();
  }
}

// The facade: build_machine starts a virtiofsd per bind mount (tags in the order mounted,
// parents first) and hands the guest init every mount.
TEST_F(VirtiofsdTest, BuildMachineStartsOneVirtiofsdPerBindMount) {
  if (::geteuid() != 0) GTEST_SKIP() << kRootOnly;
  std::filesystem::create_directory(dir_.path() / "other");
  runtime::MachineOptions mo;
  mo.kernel = "/nonexistent/vmlinux";
  mo.rootfs = "/nonexistent/rootfs.ext4";
  mo.network = runtime::NetworkMode::kNone;
  mo.mounts = {runtime::parse_tmpfs("/data/cache:size=1m"),
               runtime::parse_volume((dir_.path() / "other").string() + ":/host"),
               // The comma in the path: quoted, as docker's CSV wants it.
               runtime::parse_mount("type=bind,\"src=" + share().string() + "\",dst=/data,ro")};
  runtime::PreparedMachine pm = runtime::build_machine(std::move(mo));
  ASSERT_EQ(pm.shares.size(), 2u);
  ASSERT_EQ(pm.config.fs.size(), 2u);
  ASSERT_EQ(pm.overrides.mounts.size(), 3u);
  const auto& m = pm.overrides.mounts;
  EXPECT_EQ(m[0].target, "/host");
  EXPECT_EQ(m[0].tag, "img2vm-fs0");
  EXPECT_FALSE(m[0].readonly);
  EXPECT_EQ(m[1].target, "/data");
  EXPECT_EQ(m[1].tag, "img2vm-fs1");
  EXPECT_TRUE(m[1].readonly);
  EXPECT_EQ(m[2].target, "/data/cache");
  EXPECT_EQ(m[2].type, guestabi::MountSpec::Type::kTmpfs);
  EXPECT_EQ(pm.config.fs[1].tag, "img2vm-fs1");
  EXPECT_EQ(pm.config.fs[1].socket_fd, pm.shares[1].socket_fd());
  Session ro(pm.config.fs[1].socket_fd);
  EXPECT_EQ(ro.mkdir("made"), -EROFS);
  Session rw(pm.config.fs[0].socket_fd);
  EXPECT_EQ(rw.mkdir("made"), 0);
  EXPECT_TRUE(std::filesystem::is_directory(dir_.path() / "other" / "made"));
}

// A volume mount: build_machine creates the volume in the given store, serves its _data like a
// bind mount and holds it (in use) as long as the PreparedMachine lives.
TEST_F(VirtiofsdTest, BuildMachineServesAVolumeAndHoldsIt) {
  if (::geteuid() != 0) GTEST_SKIP() << kRootOnly;
  runtime::MachineOptions mo;
  mo.kernel = "/nonexistent/vmlinux";
  mo.rootfs = "/nonexistent/rootfs.ext4";  // nocopy: never read
  mo.network = runtime::NetworkMode::kNone;
  mo.volumes_dir = dir_.path() / "volumes";
  mo.mounts = {runtime::parse_volume("cache:/cache:nocopy")};
  runtime::VolumeStore vs(mo.volumes_dir);
  {
    runtime::PreparedMachine pm = runtime::build_machine(std::move(mo));
    ASSERT_EQ(pm.volumes.size(), 1u);
    ASSERT_EQ(pm.config.fs.size(), 1u);
    EXPECT_EQ(pm.overrides.mounts[0].target, "/cache");
    Session rw(pm.config.fs[0].socket_fd);
    EXPECT_EQ(rw.mkdir("made"), 0);
    EXPECT_TRUE(std::filesystem::is_directory(vs.dir() / "cache" / "_data" / "made"));
    EXPECT_THROW(vs.remove("cache"), Error);
  }
  vs.remove("cache");
  EXPECT_FALSE(vs.find("cache"));
}

// Not root: the same in an unprivileged user namespace. The test drops to nobody in a child.
TEST_F(VirtiofsdTest, RootlessInAUserNamespace) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to become another user";
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
  ASSERT_EQ(::chown(share().c_str(), 65534, 65534), 0);
  ASSERT_EQ(::chown((share() / "hello.txt").c_str(), 65534, 65534), 0);
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd rd(p[0]), wr(p[1]);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::string out;
    if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(3);
    try {
      Virtiofsd v = Virtiofsd::start(options(true));
      Session s(v.socket_fd());
      out = "mkdir " + std::to_string(s.mkdir("made")) + " lookup " +
            std::to_string(s.lookup("hello.txt").attr.size);
    } catch (const Error& e) {
      out =
          std::string(e.kind() == ErrorKind::kUnsupported ? "unsupported: " : "error: ") + e.what();
    }
    (void)!::write(wr.get(), out.data(), out.size());
    ::_exit(0);
  }
  wr.reset();
  std::string out;
  char buf[512];
  ssize_t n;
  while ((n = ::read(rd.get(), buf, sizeof buf)) > 0) out.append(buf, size_t(n));
  int st = 0;
  ASSERT_EQ(::waitpid(child, &st, 0), child);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  if (out.rfind("unsupported: ", 0) == 0) GTEST_SKIP() << out;
  EXPECT_EQ(out, "mkdir " + std::to_string(-EROFS) + " lookup 1234");
  EXPECT_FALSE(std::filesystem::exists(share() / "made"));
}

}  // namespace
