// The runner on real KVM with tiny guests built by the suite (guests/). Each test runs where
// /dev/kvm works: here with hardware KVM, else inside the nested rig's L1 guest (the route is
// printed as "[kvm route] ...").
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <thread>

#include "img2vm/base/digest.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/vm/machine.hpp"
#include "nested_rig.hpp"
#include "process.hpp"
#include "snapshot_file.hpp"
#include "vcpu_setup.hpp"

using namespace img2vm;
using namespace img2vm::vm;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

fs::path guest(const std::string& name) { return fs::path(VM_GUEST_DIR) / (name + ".elf"); }
std::vector<fs::path> all_guests() {
  return {guest("basic"), guest("blk"), guest("pvh"), guest("net")};
}

// A pipe for a machine's console input: the machine reads `r`, the test writes `w`.
struct Input {
  UniqueFd r, w;
  Input() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    r.reset(fds[0]);
    w.reset(fds[1]);
  }
  void send(std::string_view s) {
    if (::write(w.get(), s.data(), s.size()) != ssize_t(s.size()))
      throw std::runtime_error("write");
  }
};

// Captures the console in a pipe read after the VM ended (tests print little).
struct Console {
  int fds[2] = {-1, -1};
  Console() {
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    ::fcntl(fds[1], F_SETPIPE_SZ, 1 << 20);
  }
  ~Console() {
    ::close(fds[0]);
    if (fds[1] >= 0) ::close(fds[1]);
  }
  std::string drain() {
    ::close(fds[1]);
    fds[1] = -1;
    std::string s;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fds[0], buf, sizeof buf)) > 0) s.append(buf, size_t(n));
    return s;
  }
};

MachineConfig config(const std::string& g, const std::string& cmdline, int out_fd) {
  MachineConfig c;
  c.kernel = guest(g);
  c.cmdline = cmdline;
  c.memory_mib = 64;
  c.console_out_fd = out_fd;
  c.timeout = 60s;
  return c;
}

#define KVM_TEST_PRELUDE() \
  if (!img2vm::testing::run_here_or_nested(all_guests())) return

}  // namespace

TEST(VmKvm, SerialOutputAndExitStatus) {
  KVM_TEST_PRELUDE();
  Console con;
  Machine m(config("basic", "mode=hello", con.fds[1]));
  auto r = m.run();
  EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe();
  EXPECT_EQ(r.status, 42);
  EXPECT_EQ(r.host_exit_code(), 42);
  EXPECT_EQ(con.drain(), "hello from the guest\n");
  ASSERT_TRUE(r.timings.first_entry && r.timings.ended);
  EXPECT_LE(*r.timings.first_entry, *r.timings.ended);
}

TEST(VmKvm, SecondUartWritesToItsOwnFd) {
  KVM_TEST_PRELUDE();
  Console con, err;
  MachineConfig c = config("basic", "mode=stderr", con.fds[1]);
  c.console_err_fd = err.fds[1];
  Machine m(c);
  auto r = m.run();
  EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe();
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(con.drain(), "to COM1\nCOM1 again\n");
  EXPECT_EQ(err.drain(), "to COM2\n");
}

TEST(VmKvm, ExitStatusPassesThroughUnchanged) {
  KVM_TEST_PRELUDE();
  for (int status : {0, 1, 3, 137, 255}) {
    Machine m(config("basic", "mode=exit:" + std::to_string(status), -1));
    auto r = m.run();
    EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe();
    EXPECT_EQ(r.status, status);
    EXPECT_EQ(r.host_exit_code(), status);
    EXPECT_EQ(r.describe(), "exited with status " + std::to_string(status));
  }
}

TEST(VmKvm, InitFailureIsDistinct) {
  KVM_TEST_PRELUDE();
  Machine m(config("basic", "mode=initfail:7", -1));
  auto r = m.run();
  EXPECT_EQ(r.reason, ExitReason::kInitFailed) << r.describe();
  EXPECT_EQ(r.status, 7);
  EXPECT_EQ(r.host_exit_code(), 122);
}

TEST(VmKvm, BootMarksAreTimestamped) {
  KVM_TEST_PRELUDE();
  Machine m(config("basic", "mode=marks", -1));
  auto r = m.run();
  EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe();
  ASSERT_TRUE(r.timings.setup_done && r.timings.first_entry && r.timings.init_started &&
              r.timings.workload_exec);
  EXPECT_LE(*r.timings.setup_done, *r.timings.first_entry);
  EXPECT_LE(*r.timings.first_entry, *r.timings.init_started);
  EXPECT_LE(*r.timings.init_started, *r.timings.workload_exec);
  EXPECT_LE(*r.timings.workload_exec, *r.timings.ended);
}

TEST(VmKvm, I8042ResetWithoutStatusMeansTheGuestDied) {
  KVM_TEST_PRELUDE();
  Machine m(config("basic", "mode=reset", -1));
  auto r = m.run();
  EXPECT_EQ(r.reason, ExitReason::kReboot) << r.describe();
  EXPECT_EQ(r.host_exit_code(), 123);
  EXPECT_NE(r.detail.find("without reporting an exit status"), std::string::npos) << r.detail;
}

TEST(VmKvm, TripleFaultIsReported) {
  KVM_TEST_PRELUDE();
  Machine m(config("basic", "mode=triple", -1));
  auto r = m.run();
  EXPECT_EQ(r.reason, ExitReason::kTripleFault) << r.describe();
  EXPECT_EQ(r.host_exit_code(), 123);
  EXPECT_NE(r.detail.find("triple-fault"), std::string::npos) << r.detail;
}

TEST(VmKvm, TimeoutEndsAHungGuest) {
  KVM_TEST_PRELUDE();
  auto c = config("basic", "mode=hang", -1);
  c.timeout = 1500ms;
  Machine m(c);
  auto r = m.run();
  EXPECT_EQ(r.reason, ExitReason::kTimeout) << r.describe();
  EXPECT_EQ(r.host_exit_code(), 124);
}

TEST(VmKvm, StopFromAnotherThreadAndWaitFor) {
  KVM_TEST_PRELUDE();
  auto c = config("basic", "mode=hang", -1);
  c.timeout = 0ms;
  c.vcpus = 2;
  Machine m(c);
  m.start();
  EXPECT_FALSE(m.wait_for(200ms).has_value());  // still hung: the guest never ends by itself
  std::thread t([&] { m.stop(); });
  auto r = m.wait();
  t.join();
  EXPECT_EQ(r.reason, ExitReason::kStopped) << r.describe();
  EXPECT_EQ(r.host_exit_code(), 130);
}

// The message of the Error a Machine built from `c` throws (kind in `kind`), "" if none.
std::string construction_error(const MachineConfig& c, ErrorKind* kind = nullptr) {
  try {
    Machine m(c);
    return "";
  } catch (const Error& e) {
    if (kind) *kind = e.kind();
    return e.what();
  }
}

// A guest paused at the mark, saved to `snap`, resumed to its end with `status`.
void snapshot_at_the_mark(MachineConfig c, const fs::path& snap, int status) {
  c.pause_at_snapshot_point = true;
  Machine m(c);
  m.start();
  ASSERT_TRUE(m.wait_for_pause(60s));
  m.save_snapshot(snap);
  m.resume();
  auto r = m.wait();
  EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe();
  EXPECT_EQ(r.status, status);
}

// The "basic" guest in mode=snap with 2 vCPUs (the second stays in wait-for-SIPI: its MP state
// must come back too); it ends with status 7.
MachineConfig basic_snap_config(int out_fd) {
  auto c = config("basic", "mode=snap", out_fd);
  c.vcpus = 2;
  return c;
}

MachineConfig restore_config(const fs::path& dir, int out_fd) {
  auto c = config("basic", "", out_fd);
  c.kernel.clear();
  c.cmdline.clear();
  c.vcpus = 2;
  c.restore_from = dir;
  // The snapshot was taken after the mark's OUT completed: were it run again, the restored VM
  // would pause there and never end (the test's timeout ends it as kTimeout).
  c.pause_at_snapshot_point = true;
  return c;
}

// A machine with a vsock device (its driver not loaded: the guest leaves it alone): the snapshot
// holds its transport and CID; each restore listens on a socket of its own; a restore needs the
// device and the same CID.
TEST(VmKvm, ASnapshotWithAVsockDeviceResumesWithANewSocket) {
  KVM_TEST_PRELUDE();
  TempDir tmp("vmsnap-vsock");
  const fs::path snap = tmp.path() / "snap";
  {
    Console con;
    auto c = basic_snap_config(con.fds[1]);
    c.vsock = VsockConfig{5, tmp.path() / "orig.sock"};
    snapshot_at_the_mark(c, snap, 7);
    EXPECT_EQ(con.drain(), "before\nafter 00079f2d 5a\n");
  }
  for (int run = 0; run < 2; ++run) {
    Console con;
    auto c = restore_config(snap, con.fds[1]);
    const fs::path sock = tmp.path() / ("run-" + std::to_string(run) + ".sock");
    c.vsock = VsockConfig{5, sock};
    Machine m(c);
    EXPECT_TRUE(fs::is_socket(sock)) << "run " << run;
    auto r = m.run();
    EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe();
    EXPECT_EQ(r.status, 7);
    EXPECT_EQ(con.drain(), "after 00079f2d 5a\n") << "run " << run;
    fs::remove(sock);
  }
  ErrorKind kind{};
  EXPECT_EQ(construction_error(restore_config(snap, -1), &kind),
            "the snapshot in " + snap.string() +
                " is of a machine with a vsock device, this one has none");
  EXPECT_EQ(kind, ErrorKind::kInvalidArgument);
  auto other_cid = restore_config(snap, -1);
  other_cid.vsock = VsockConfig{6, tmp.path() / "other.sock"};
  EXPECT_NE(construction_error(other_cid, &kind)
                .find("the snapshot's vsock device had CID 5, this one 6"),
            std::string::npos);
  EXPECT_EQ(kind, ErrorKind::kUnsupported);
  // Refused after its socket was bound: the socket is gone, and a machine on the same path can
  // be built at once (the runner's cold boot after a refused snapshot).
  EXPECT_FALSE(fs::exists(tmp.path() / "other.sock"));
  other_cid.vsock->guest_cid = 5;
  Machine again(other_cid);
  EXPECT_TRUE(fs::is_socket(tmp.path() / "other.sock"));
}

TEST(VmKvm, ASnapshotAtTheMarkResumesInOtherMachines) {
  KVM_TEST_PRELUDE();
  TempDir tmp("vmsnap");
  const fs::path snap = tmp.path() / "snap";
  {
    Console con;
    snapshot_at_the_mark(basic_snap_config(con.fds[1]), snap, 7);
    EXPECT_EQ(con.drain(), "before\nafter 00079f2d 5a\n");
  }
  ASSERT_TRUE(fs::exists(snap / "state"));
  EXPECT_EQ(fs::file_size(snap / "memory"), 64u << 20);
  const Digest memory_before = Digest::sha256_of(read_file(snap / "memory"));
  // Two machines from one snapshot: each goes on from the mark, with the sum in its memory.
  for (int run = 0; run < 2; ++run) {
    Console con;
    Machine m(restore_config(snap, con.fds[1]));
    auto r = m.run();
    EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe();
    EXPECT_EQ(r.status, 7);
    EXPECT_EQ(con.drain(), "after 00079f2d 5a\n") << "run " << run;
  }
  // The guests wrote to their copies of the pages, never to the file.
  EXPECT_EQ(Digest::sha256_of(read_file(snap / "memory")), memory_before);

  // What cannot be restored is refused before anything runs, with the reason.
  ErrorKind kind{};
  auto other_size = restore_config(snap, -1);
  other_size.memory_mib = 128;
  EXPECT_EQ(construction_error(other_size, &kind),
            "the snapshot in " + snap.string() +
                " is of a machine with 64 MiB and 2 vCPUs, not 128 MiB and 2");
  auto with_disk = restore_config(snap, -1);
  with_disk.disks = {{snap / "memory", DiskMode::kReadOnly, ""}};
  EXPECT_EQ(construction_error(with_disk, &kind),
            "the snapshot in " + snap.string() + " is of a machine with 0 disks, not 1");
  EXPECT_EQ(kind, ErrorKind::kInvalidArgument);
  auto with_nic = restore_config(snap, -1);
  with_nic.net = NicConfig{};
  EXPECT_EQ(construction_error(with_nic, &kind),
            "the snapshot in " + snap.string() + " is of a machine with no NIC, this one has one");
  EXPECT_EQ(kind, ErrorKind::kInvalidArgument);
  auto with_vsock = restore_config(snap, -1);
  with_vsock.vsock = VsockConfig{3, tmp.path() / "vsock"};
  EXPECT_EQ(construction_error(with_vsock, &kind),
            "the snapshot in " + snap.string() +
                " is of a machine with no vsock device, this one has one");
  EXPECT_EQ(kind, ErrorKind::kInvalidArgument);

  // Another CPU: vCPU 0's CPUID section as another host's KVM would have given it.
  const std::string state = read_file(snap / "state");
  auto copy = [&](const std::string& name, const std::string& state_bytes) {
    fs::path d = tmp.path() / name;
    fs::create_directories(d);
    fs::copy_file(snap / "memory", d / "memory");
    write_file_atomic(d / "state", state_bytes);
    return d;
  };
  {
    auto st = SnapshotState::parse(state);
    SnapshotWriter w;
    for (const auto& e : st.entries()) {
      std::vector<uint8_t> p(e.payload.begin(), e.payload.end());
      if (e.section == Section::kCpuid && e.instance == 0 && p.size() > sizeof(CpuidHeader) + 12)
        p[sizeof(CpuidHeader) + 12] ^= 1;  // the first entry's eax
      w.add(e.section, e.instance, p);
    }
    EXPECT_NE(construction_error(restore_config(copy("other-cpu", w.serialize()), -1), &kind)
                  .find("taken on a CPU with other features"),
              std::string::npos);
    EXPECT_EQ(kind, ErrorKind::kUnsupported);
  }
  // Damaged files: a truncated state, a truncated memory file.
  EXPECT_NE(construction_error(
                restore_config(copy("cut-state", state.substr(0, state.size() / 2)), -1), &kind)
                .find("snapshot state file: truncated"),
            std::string::npos);
  EXPECT_EQ(kind, ErrorKind::kIntegrity);
  {
    fs::path d = copy("cut-memory", state);
    fs::resize_file(d / "memory", 32u << 20);
    EXPECT_NE(
        construction_error(restore_config(d, -1), &kind).find("the snapshot's guest memory is"),
        std::string::npos);
    EXPECT_EQ(kind, ErrorKind::kIntegrity);
  }
}

// A guest writes a sector of its copy-on-write disk, reaches the snapshot point, then reads
// that sector and writes another. Two machines resumed from the snapshot each see the first
// write, not each other's later one, and the image and the saved writes stay as they were.
TEST(VmKvm, ASnapshotWithACopyOnWriteDiskResumesWithTheGuestsWrites) {
  KVM_TEST_PRELUDE();
  TempDir tmp("vmsnapblk");
  const fs::path img = tmp.path() / "disk.img", snap = tmp.path() / "snap";
  {
    std::string data(1 << 20, '\0');
    data.replace(3 * 512, 13, "base sector 3");
    write_file_atomic(img, data);
  }
  const Digest image_before = Digest::sha256_of(read_file(img));
  auto blk_config = [&](const std::string& cmdline, int out_fd) {
    auto c = config("blk", cmdline, out_fd);
    c.pause_at_snapshot_point = true;
    c.disks = {{img, DiskMode::kCopyOnWrite, ""}};
    return c;
  };
  const std::string after = "sector3: base sector 3\nsector2: before the snapshot\nsnap ok\n";
  {
    Console con;
    snapshot_at_the_mark(blk_config("mode=snap", con.fds[1]), snap, 0);
    EXPECT_EQ(con.drain(), "written\n" + after);
  }
  ASSERT_TRUE(fs::exists(snap / "disk-0"));
  const Digest saved_before = Digest::sha256_of(read_file(snap / "disk-0"));
  auto restore = [&](int out_fd) {
    auto c = blk_config("", out_fd);
    c.kernel.clear();
    c.restore_from = snap;
    return c;
  };
  for (int run = 0; run < 2; ++run) {
    Console con;
    Machine m(restore(con.fds[1]));
    auto r = m.run();
    EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe();
    EXPECT_EQ(r.status, 0) << "run " << run;
    EXPECT_EQ(con.drain(), after) << "run " << run;
  }
  EXPECT_EQ(Digest::sha256_of(read_file(img)), image_before);
  EXPECT_EQ(Digest::sha256_of(read_file(snap / "disk-0")), saved_before);

  // A machine whose disks differ from the snapshot's is refused, naming the disk.
  ErrorKind kind{};
  const fs::path big = tmp.path() / "big.img";
  write_file_atomic(big, std::string(2 << 20, '\0'));
  auto other_size = restore(-1);
  other_size.disks[0].path = big;
  EXPECT_EQ(construction_error(other_size, &kind),
            "disk 0 (" + big.string() + "): 2097152 bytes, the snapshot's disk had 1048576");
  EXPECT_EQ(kind, ErrorKind::kInvalidArgument);
  auto no_disk = restore(-1);
  no_disk.disks.clear();
  EXPECT_EQ(construction_error(no_disk, &kind),
            "the snapshot in " + snap.string() + " is of a machine with 1 disks, not 0");
  EXPECT_EQ(kind, ErrorKind::kInvalidArgument);
  auto read_only = restore(-1);
  read_only.disks[0].mode = DiskMode::kReadOnly;
  EXPECT_EQ(construction_error(read_only, &kind),
            "disk 0 (" + img.string() + ") is read-only, the snapshot's was copy-on-write");
  EXPECT_EQ(kind, ErrorKind::kInvalidArgument);

  // A read-write disk cannot be saved: the file may change under the guest's page cache.
  auto rw = blk_config("mode=snap", -1);
  rw.disks[0].mode = DiskMode::kReadWrite;
  rw.disks[0].path = big;
  Machine m(rw);
  m.start();
  ASSERT_TRUE(m.wait_for_pause(60s));
  try {
    m.save_snapshot(tmp.path() / "rw");
    ADD_FAILURE() << "a read-write disk was saved";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("disk 0 (" + big.string() + ") is read-write"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(tmp.path() / "rw" / "state"));
}

// A guest busy reading the UART's status (an exit per read) is paused in the middle of one,
// snapshotted there, and resumed twice: the read completes and the guest reads on.
TEST(VmKvm, APausedMachineResumesAndItsSnapshotTakesNewInput) {
  KVM_TEST_PRELUDE();
  TempDir tmp("vmpause");
  Input in;
  Console con;
  auto c = config("basic", "mode=echo", con.fds[1]);
  c.console_in_fd = in.r.get();
  Machine m(c);
  m.start();
  in.send("ab");
  ASSERT_TRUE(m.pause(60s));
  m.save_snapshot(tmp.path() / "snap");
  in.send("cq");  // read by the UART while paused, taken after
  m.resume();
  auto r = m.wait();
  EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe();
  EXPECT_EQ(r.status, 0);
  std::string out = con.drain();
  EXPECT_EQ(out.substr(0, 6), "ready\n");
  EXPECT_EQ(out.substr(out.size() - 3), "ABC") << out;

  Input in2;
  Console con2;
  auto rc = config("basic", "", con2.fds[1]);
  rc.kernel.clear();
  rc.restore_from = tmp.path() / "snap";
  rc.console_in_fd = in2.r.get();
  in2.send("xyq");
  Machine m2(rc);
  auto r2 = m2.run();
  EXPECT_EQ(r2.reason, ExitReason::kExited) << r2.describe();
  EXPECT_EQ(r2.status, 0);
  std::string out2 = con2.drain();
  EXPECT_EQ(out2.substr(out2.size() - 2), "XY") << out2;
}

TEST(VmKvm, ConsoleInputReachesTheGuest) {
  KVM_TEST_PRELUDE();
  int in[2];
  ASSERT_EQ(::pipe2(in, O_CLOEXEC), 0);
  UniqueFd in_r(in[0]), in_w(in[1]);
  Console con;
  auto c = config("basic", "mode=echo", con.fds[1]);
  c.console_in_fd = in_r.get();
  Machine m(c);
  m.start();
  ASSERT_EQ(::write(in_w.get(), "abc\nq", 5), 5);
  auto r = m.wait();
  EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe();
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(con.drain(), "ready\nABC\n");
}

// The end of console input reaches the guest as SIGNAL 0x82 (once) with the byte count on
// STDIN_BYTES, and every byte arrives before the count says so.
TEST(VmKvm, EndOfConsoleInputIsReportedWithItsLength) {
  KVM_TEST_PRELUDE();
  int in[2];
  ASSERT_EQ(::pipe2(in, O_CLOEXEC), 0);
  UniqueFd in_r(in[0]), in_w(in[1]);
  Console con;
  auto c = config("basic", "mode=eof", con.fds[1]);
  c.console_in_fd = in_r.get();
  Machine m(c);
  m.start();
  std::string data(300, 'x');  // more than the UART's FIFO holds at once
  ASSERT_EQ(::write(in_w.get(), data.data(), data.size()), ssize_t(data.size()));
  in_w.reset();
  auto r = m.wait();
  EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe();
  EXPECT_EQ(r.status, 300 & 0xff) << "96: the end was reported twice";
  EXPECT_EQ(con.drain(), "eof after 012c\n");

  // Input from a regular file (which epoll cannot watch) and from /dev/null.
  TempDir dir("vmeof");
  write_file_atomic(dir.path() / "input", std::string(200, 'y'));
  for (auto [path, n] : {std::pair<fs::path, int>{dir.path() / "input", 200}, {"/dev/null", 0}}) {
    UniqueFd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(f) << path;
    Console con2;
    auto c2 = config("basic", "mode=eof", con2.fds[1]);
    c2.console_in_fd = f.get();
    Machine m2(c2);
    auto r2 = m2.run();
    EXPECT_EQ(r2.reason, ExitReason::kExited) << path << ": " << r2.describe();
    EXPECT_EQ(r2.status, n) << path;
  }
}

TEST(VmKvm, PvhEntryGetsStartInfo) {
  KVM_TEST_PRELUDE();
  Machine m(config("pvh", "pvh-cmdline", -1));
  auto r = m.run();
  EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe();
  EXPECT_EQ(r.status, 0x33) << "0x44 means the start_info or its command line was wrong";
}

TEST(VmKvm, VirtioBlkReadsAndWritesSectors) {
  KVM_TEST_PRELUDE();
  TempDir dir("vmblk");
  fs::path disk = dir.path() / "disk.img";
  {
    std::string data(1 << 20, '\0');
    std::string hello = "the disk says hi";
    data.replace(0, hello.size(), hello);
    write_file_atomic(disk, data);
  }
  Console con;
  auto c = config("blk", "mode=rw", con.fds[1]);
  c.disks.push_back({disk, DiskMode::kReadWrite, "test-disk-id"});
  Machine m(c);
  EXPECT_NE(m.cmdline().find("virtio_mmio.device=4K@0xd0000000:5"), std::string::npos)
      << m.cmdline();
  auto r = m.run();
  std::string out = con.drain();
  EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe() << "\n" << out;
  EXPECT_EQ(r.status, 0) << out;
  EXPECT_NE(out.find("capacity: 00000800"), std::string::npos) << out;  // 2048 sectors
  EXPECT_NE(out.find("sector0: the disk says hi"), std::string::npos) << out;
  EXPECT_NE(out.find("id: test-disk-id"), std::string::npos) << out;
  EXPECT_NE(out.find("past-end status: 01"), std::string::npos) << out;
  std::string after = read_file(disk);
  ASSERT_EQ(after.size(), size_t(1) << 20);
  EXPECT_EQ(after.substr(512, 20), "written by the guest");
  EXPECT_EQ(uint8_t(after[1023]), 0x5a);
}

TEST(VmKvm, VirtioBlkReadOnlyDiskRefusesWrites) {
  KVM_TEST_PRELUDE();
  TempDir dir("vmblk");
  fs::path disk = dir.path() / "disk.img";
  write_file_atomic(disk, std::string(1 << 20, 'x'));
  Console con;
  auto c = config("blk", "mode=rw", con.fds[1]);
  c.disks.push_back({disk, DiskMode::kReadOnly, ""});
  Machine m(c);
  auto r = m.run();
  EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe();
  EXPECT_EQ(r.status, 21) << "the write must fail with IOERR: " << con.drain();
  EXPECT_EQ(read_file(disk), std::string(1 << 20, 'x'));
}

TEST(VmKvm, VirtioBlkSurvivesMaliciousChains) {
  KVM_TEST_PRELUDE();
  TempDir dir("vmblk");
  fs::path disk = dir.path() / "disk.img";
  write_file_atomic(disk, std::string(1 << 20, 'y'));
  Console con;
  auto c = config("blk", "mode=evil", con.fds[1]);
  c.disks.push_back({disk, DiskMode::kReadWrite, ""});
  Machine m(c);
  auto r = m.run();
  std::string out = con.drain();
  EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe() << "\n" << out;
  EXPECT_EQ(r.status, 0) << out;
  EXPECT_NE(out.find("device needs reset"), std::string::npos) << out;
  EXPECT_NE(out.find("evil ok"), std::string::npos) << out;
  EXPECT_EQ(read_file(disk), std::string(1 << 20, 'y'));
}

TEST(VmKvm, VirtioNetReachesTheUserNetwork) {
  KVM_TEST_PRELUDE();
  Console con;
  auto c = config("net", "mode=arp", con.fds[1]);
  c.net = NicConfig{};
  Machine m(c);
  EXPECT_NE(m.cmdline().find("virtio_mmio.device=4K@0xd0000000:5"), std::string::npos)
      << m.cmdline();
  auto r = m.run();
  std::string out = con.drain();
  EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe() << "\n" << out;
  EXPECT_EQ(r.status, 0) << out;
  EXPECT_NE(out.find("mac 52:54:00:12:34:56 mtu 05dc status 1"), std::string::npos) << out;
  EXPECT_NE(out.find("arp: 10.0.2.2 is-at 52:55:"), std::string::npos) << out;
}

namespace {
// The nested rig's L1 does not bring up its loopback interface; the host has it up already.
void ensure_loopback_up() {
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (::ioctl(s.get(), SIOCGIFFLAGS, &ifr) == 0 && !(ifr.ifr_flags & IFF_UP)) {
    ifr.ifr_flags = short(ifr.ifr_flags | IFF_UP);
    ::ioctl(s.get(), SIOCSIFFLAGS, &ifr);
  }
}
uint16_t free_tcp_port() {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}
}  // namespace

TEST(VmKvm, VirtioNetServesAPublishedPort) {
  KVM_TEST_PRELUDE();
  ensure_loopback_up();
  // A host port already taken: the Machine refuses to start, naming it.
  {
    UniqueFd taken(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(taken.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ASSERT_EQ(::listen(taken.get(), 1), 0);
    socklen_t len = sizeof a;
    ::getsockname(taken.get(), reinterpret_cast<sockaddr*>(&a), &len);
    auto c = config("net", "mode=tcp", -1);
    c.net = NicConfig{};
    c.net->user.forwards =
        parse_port_forward("127.0.0.1:" + std::to_string(ntohs(a.sin_port)) + ":80");
    try {
      Machine m(c);
      ADD_FAILURE() << "a Machine started with its published port in use";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("host port " + std::to_string(ntohs(a.sin_port)) +
                                           "/tcp is already in use"),
                std::string::npos)
          << e.what();
    }
  }
  uint16_t port = free_tcp_port();
  Console con;
  auto c = config("net", "mode=tcp", con.fds[1]);
  c.net = NicConfig{};
  c.net->user.forwards = parse_port_forward("127.0.0.1:" + std::to_string(port) + ":80");
  Machine m(c);
  ASSERT_EQ(m.published_ports().size(), 1u);
  EXPECT_EQ(m.published_ports()[0].host_port, port);
  m.start();
  UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  ASSERT_EQ(::connect(client.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0)
      << std::strerror(errno);
  ASSERT_EQ(::write(client.get(), "ping", 4), 4);
  auto r = m.wait();
  std::string out = con.drain();
  EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe() << "\n" << out;
  EXPECT_EQ(r.status, 0) << out;
  EXPECT_NE(out.find("got: ping"), std::string::npos) << out;
  pollfd p{client.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1);
  char buf[8];
  ASSERT_EQ(::read(client.get(), buf, sizeof buf), 4);
  EXPECT_EQ(std::string(buf, 4), "pong");
}

TEST(VmKvm, ConfigurationErrorsAreClear) {
  // No KVM needed: these fail before or at opening /dev/kvm.
  MachineConfig c;
  c.kernel = guest("basic");
  c.memory_mib = 4;
  try {
    Machine m(c);
    FAIL() << "accepted 4 MiB";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("memory must be between"), std::string::npos) << e.what();
  }
  c.memory_mib = 64;
  c.kvm_device = "/nonexistent/kvm";
  try {
    Machine m(c);
    FAIL() << "opened a missing device";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/kvm"), std::string::npos) << e.what();
  }
}

TEST(VmKvm, BadKernelFileIsRejectedWithItsName) {
  KVM_TEST_PRELUDE();
  TempDir dir("vmk");
  fs::path k = dir.path() / "not-a-kernel";
  write_file_atomic(k, std::string(8192, 'z'));
  auto c = config("basic", "", -1);
  c.kernel = k;
  try {
    Machine m(c);
    FAIL() << "accepted garbage as a kernel";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not-a-kernel"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("neither an ELF vmlinux nor a bzImage"), std::string::npos)
        << e.what();
  }
}

// Real Linux kernels in the runner: a bzImage (Debian's cloud kernel, the nested rig's L1
// kernel; it has no MP-table parser, so one vCPU) and, once guest/kernel/build.sh has built
// it, our own vmlinux through its PVH entry with 2 vCPUs. The initramfs is made here from
// busybox-static and port_out: it marks the boot, prints, and reports status 7.
namespace {

fs::path find_first(const std::string& glob_dir, const std::string& prefix,
                    const std::string& suffix) {
  std::error_code ec;
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(glob_dir, ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind(prefix, 0) == 0 && n.size() >= suffix.size() &&
        n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0)
      found.push_back(e.path());
  }
  std::sort(found.begin(), found.end());
  return found.empty() ? fs::path() : found.back();
}

fs::path our_vmlinux() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  const char* home = std::getenv("HOME");
  fs::path cache = xdg ? fs::path(xdg) : fs::path(home ? home : "/root") / ".cache";
  std::error_code ec;
  fs::path best;
  for (const auto& e : fs::directory_iterator(cache / "img2vm" / "kernel", ec))
    if (fs::exists(e.path() / "vmlinux")) best = e.path() / "vmlinux";
  return best;
}

// Builds the initramfs on the host side (before going nested); the path is the same in L1.
fs::path linux_initrd() {
  fs::path out = fs::path(VM_GUEST_DIR) / "linux-smoke.cpio";
  if (std::getenv("IMG2VM_NESTED_INSIDE")) return out;
  TempDir root("initrd");
  fs::create_directories(root.path() / "bin");
  fs::create_directories(root.path() / "proc");
  fs::copy_file("/bin/busybox", root.path() / "bin/busybox");
  fs::copy_file(fs::path(VM_GUEST_DIR) / "port_out", root.path() / "bin/port_out");
  write_file_atomic(root.path() / "init",
                    "#!/bin/busybox sh\n"
                    "/bin/port_out 0xf6 1\n"
                    "/bin/busybox mount -t proc proc /proc\n"
                    "echo \"LINUX-UP cpus=$(/bin/busybox grep -c ^processor /proc/cpuinfo)\"\n"
                    "/bin/port_out 0xf6 2\n"
                    "/bin/port_out 0xf4 7\n",
                    0755);
  // ctest runs these tests in parallel and a nested one may be reading the archive while
  // another test rebuilds it: write a private temp file and rename it into place.
  auto r = img2vm::testing::run_command({"sh", "-c",
                                         "set -e; t=$(mktemp '" + out.string() + ".XXXXXX'); cd '" +
                                             root.path().string() +
                                             "'; find . | cpio -o -H newc -R 0:0 --quiet > \"$t\"; "
                                             "chmod 0644 \"$t\"; mv -f \"$t\" '" +
                                             out.string() + "'"});
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  return out;
}

constexpr const char* kLinuxCmdline =
    "console=ttyS0 reboot=k panic=-1 pci=off nomodule i8042.noaux i8042.nomux i8042.dumbkbd "
    "tsc=reliable no_timer_check acpi=off rdinit=/init quiet";

void boot_linux(const fs::path& kernel, unsigned cpus, const std::string& want_cpus,
                const std::string& want_format) {
  Console con;
  MachineConfig c;
  c.kernel = kernel;
  c.initrd = linux_initrd();
  c.cmdline = kLinuxCmdline;
  c.memory_mib = 256;
  c.vcpus = cpus;
  c.console_out_fd = con.fds[1];
  c.timeout = std::chrono::minutes(8);
  Machine m(c);
  EXPECT_EQ(m.kernel_format(), want_format);
  auto r = m.run();
  std::string out = con.drain();
  EXPECT_EQ(r.reason, ExitReason::kExited) << r.describe() << "\n" << out;
  EXPECT_EQ(r.status, 7) << out;
  EXPECT_NE(out.find("LINUX-UP cpus=" + want_cpus), std::string::npos) << out;
  ASSERT_TRUE(r.timings.init_started && r.timings.workload_exec) << "boot marks missing";
  auto ms = [](std::chrono::microseconds d) { return std::to_string(d.count() / 1000); };
  std::fprintf(
      stderr,
      "[linux boot] %s: setup %s ms, first entry %s ms, init %s ms, exec %s ms, end %s ms\n",
      kernel.c_str(), ms(*r.timings.setup_done).c_str(), ms(*r.timings.first_entry).c_str(),
      ms(*r.timings.init_started).c_str(), ms(*r.timings.workload_exec).c_str(),
      ms(*r.timings.ended).c_str());
}

}  // namespace

TEST(VmLinux, BootsBzImageToUserspace) {
  fs::path kernel = find_first("/boot", "vmlinuz-", "-cloud-amd64");
  if (kernel.empty())
    GTEST_SKIP() << "no /boot/vmlinuz-*-cloud-amd64 (linux-image-cloud-amd64, scripts/setup.sh)";
  fs::path initrd = linux_initrd();
  if (!img2vm::testing::run_here_or_nested({kernel, initrd}, false)) return;
  boot_linux(kernel, 1, "1", "bzImage (64-bit boot protocol)");
}

// The same kernel as an ELF vmlinux (extracted with the kernel's scripts/extract-vmlinux from
// linux-source-6.1): it carries the PVH note, so the runner enters it in 32-bit mode.
TEST(VmLinux, BootsVmlinuxThroughPvh) {
  fs::path bz = find_first("/boot", "vmlinuz-", "-cloud-amd64");
  const fs::path src = "/usr/src/linux-source-6.1.tar.xz";
  fs::path vmlinux = fs::path(VM_GUEST_DIR) / "cloud-vmlinux";
  const bool inside = std::getenv("IMG2VM_NESTED_INSIDE") != nullptr;  // L1 has the extracted copy
  if (!inside && (bz.empty() || !fs::exists(src)))
    GTEST_SKIP() << "needs linux-image-cloud-amd64 and linux-source-6.1";
  if (!inside && !fs::exists(vmlinux)) {
    auto r = img2vm::testing::run_command(
        {"sh", "-c",
         "set -e; t=$(mktemp -d); tar -xJOf '" + src.string() +
             "' linux-source-6.1/scripts/extract-vmlinux > $t/x; o=$(mktemp '" + vmlinux.string() +
             ".XXXXXX'); bash $t/x '" + bz.string() +
             "' > \"$o\"; rm -rf $t; chmod 0644 \"$o\"; mv -f \"$o\" '" + vmlinux.string() + "'"});
    ASSERT_EQ(r.exit_code, 0) << r.describe();
  }
  fs::path initrd = linux_initrd();
  if (!img2vm::testing::run_here_or_nested({vmlinux, initrd}, false)) return;
  boot_linux(vmlinux, 1, "1", "vmlinux (PVH entry)");
}

TEST(VmLinux, BootsOurVmlinuxThroughPvhWithTwoCpus) {
  fs::path kernel = our_vmlinux();
  if (kernel.empty())
    GTEST_SKIP() << "no ~/.cache/img2vm/kernel/*/vmlinux yet (guest/kernel/build.sh)";
  fs::path initrd = linux_initrd();
  if (!img2vm::testing::run_here_or_nested({kernel, initrd}, false)) return;
  boot_linux(kernel, 2, "2", "vmlinux (PVH entry)");
}
