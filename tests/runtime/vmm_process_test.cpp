// img2vm-vmm as a child (runtime::VmmProcess), without KVM: the real program fails to open
// /dev/kvm or the kernel and its status comes back; stand-in programs show what the child
// keeps open, stop's SIGTERM then SIGKILL, and that destroying the handle ends the child.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "common.hpp"
#include "img2vm/runtime/vmm.hpp"

using namespace img2vm;
using namespace img2vm::testing;
namespace fs = std::filesystem;

namespace {

// A stand-in for img2vm-vmm: a shell script (it gets "--spec-fd N" as $1 $2).
fs::path script(const TempDir& dir, const std::string& name, const std::string& body) {
  fs::path p = dir.path() / name;
  write_file_atomic(p, "#!/bin/sh\n" + body + "\n", 0755);
  return p;
}

vm::MachineConfig dummy_config(const fs::path& kernel) {
  vm::MachineConfig mc;
  mc.kernel = kernel;
  mc.cmdline = "console=ttyS0";
  mc.disks.push_back({"/nonexistent/root.ext4", vm::DiskMode::kCopyOnWrite, "img2vm-root"});
  return mc;
}

TEST(RuntimeVmm, TheRealVmmsFailureComesBackAsItsStatus) {
  // No /dev/kvm here, or no such kernel where there is one: img2vm-vmm exits 125.
  TempDir dir("rt-vmm");
  std::string spec =
      runtime::vmm_spec(dummy_config(dir.path() / "no-kernel"), R"({"log_level":"error"})");
  runtime::VmmProcess vmm = runtime::VmmProcess::start(spec);
  EXPECT_GT(vmm.pid(), 0);
  runtime::ExitStatus st = vmm.wait();
  EXPECT_TRUE(st.exited);
  EXPECT_EQ(st.code, 125);
  EXPECT_EQ(st.host_exit_code(), 125);
  EXPECT_EQ(vmm.pid(), 0);
  EXPECT_EQ(vmm.wait().code, 125);  // asked again: the same answer
}

TEST(RuntimeVmm, TheChildKeepsTheSpecAndTheConfigsDescriptorsOnly) {
  TempDir dir("rt-vmm");
  UniqueFd disk = runtime::sealed_memfd("rt-disk", std::string(512, 'x'));
  UniqueFd leaked(::open("/dev/null", O_RDONLY));  // no O_CLOEXEC: the child must not get it
  ASSERT_TRUE(leaked);
  vm::MachineConfig mc = dummy_config("/nonexistent/vmlinux");
  mc.disks.push_back(
      {"/proc/self/fd/" + std::to_string(disk.get()), vm::DiskMode::kReadOnly, "ovr"});
  int sv[2];  // a virtio-fs socket (close-on-exec, as runtime::Virtiofsd's)
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd fs_ours(sv[0]), fs_theirs(sv[1]);
  mc.fs.push_back({"share", {}, fs_ours.get()});
  fs::path out = dir.path() / "fds";
  fs::path vmm = script(dir, "fake-vmm",
                        "cat /proc/$$/fd/$2 > " + (dir.path() / "spec").string() +
                            "\nls /proc/$$/fd > " + out.string() + "\nexit 42");
  runtime::VmmChildOptions o;
  o.vmm = vmm;
  runtime::VmmProcess p = runtime::VmmProcess::start(runtime::vmm_spec(mc), o);
  runtime::ExitStatus st = p.wait();
  ASSERT_TRUE(st.exited);
  EXPECT_EQ(st.code, 42);
  std::vector<std::string> fds;
  std::string list = read_file(out);
  for (size_t at = 0, nl; (nl = list.find('\n', at)) != std::string::npos; at = nl + 1)
    fds.push_back(list.substr(at, nl - at));
  auto has = [&](int fd) {
    return std::find(fds.begin(), fds.end(), std::to_string(fd)) != fds.end();
  };
  EXPECT_TRUE(has(disk.get())) << list;
  EXPECT_TRUE(has(fs_ours.get())) << list;
  EXPECT_FALSE(has(fs_theirs.get())) << list;
  EXPECT_FALSE(has(leaked.get())) << list;
  EXPECT_EQ(read_file(dir.path() / "spec"), runtime::vmm_spec(mc));
}

TEST(RuntimeVmm, StopTerminatesThenKills) {
  TempDir dir("rt-vmm");
  std::string spec = runtime::vmm_spec(dummy_config("/nonexistent/vmlinux"));
  runtime::VmmChildOptions o;
  o.vmm = script(dir, "sleeper", "exec sleep 1000");
  // SIGTERM ends it.
  runtime::VmmProcess a = runtime::VmmProcess::start(spec, o);
  runtime::ExitStatus sa = a.stop(std::chrono::seconds(60));
  EXPECT_FALSE(sa.exited);
  EXPECT_EQ(sa.signal, SIGTERM);
  EXPECT_EQ(sa.host_exit_code(), 125);
  // A child that holds SIGTERM blocked is killed once the grace period is over.
  sigset_t blocked;
  sigemptyset(&blocked);
  sigaddset(&blocked, SIGTERM);
  o.sigmask = blocked;
  runtime::VmmProcess b = runtime::VmmProcess::start(spec, o);
  EXPECT_FALSE(b.wait_for(std::chrono::milliseconds(0)));
  runtime::ExitStatus sb = b.stop(std::chrono::milliseconds(200));
  EXPECT_EQ(sb.signal, SIGKILL);
  // Dropping the handle kills and reaps the child.
  pid_t pid = 0;
  {
    runtime::VmmProcess c = runtime::VmmProcess::start(spec, o);
    pid = c.pid();
    ASSERT_GT(pid, 0);
  }
  EXPECT_EQ(::kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
}

TEST(RuntimeVmm, StartFailuresAreErrors) {
  TempDir dir("rt-vmm");
  std::string spec = runtime::vmm_spec(dummy_config("/nonexistent/vmlinux"));
  runtime::VmmChildOptions o;
  o.vmm = dir.path() / "missing-vmm";
  Error missing = error_of([&] { runtime::VmmProcess::start(spec, o); });
  EXPECT_NE(std::string(missing.what()).find("cannot start the VMM " + o.vmm.string()),
            std::string::npos)
      << missing.what();
  // A caller that ignores SIGCHLD could never wait for the child: refused up front.
  struct sigaction ign {
  }, old{};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGCHLD, &ign, &old);
  o.vmm = script(dir, "sleeper", "exec sleep 1000");
  Error ignored = error_of([&] { runtime::VmmProcess::start(spec, o); });
  ::sigaction(SIGCHLD, &old, nullptr);
  EXPECT_EQ(ignored.kind(), ErrorKind::kInvalidArgument) << ignored.what();
  // A spec without a machine.
  EXPECT_EQ(error_of([&] { runtime::VmmProcess::start("{}", o); }).kind(),
            ErrorKind::kInvalidArgument);
}

}  // namespace
