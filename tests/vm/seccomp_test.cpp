// The runner's per-thread seccomp filters: allowed calls work, others are refused, and only in
// the thread that installed the filter.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <thread>

#include "img2vm/vm/seccomp.hpp"

using namespace img2vm::vm;

namespace {
struct Outcome {
  int open_errno = 0, ioctl_errno = 0, read_result = -2;
  bool wrote = false, installed = false;
};

Outcome probe(ThreadRole role) {
  int p[2];
  EXPECT_EQ(::pipe(p), 0);
  Outcome o;
  std::thread t([&] {
    install_thread_seccomp(role, SeccompMode::kErrno);
    o.installed = true;
    o.wrote = ::write(p[1], "x", 1) == 1;
    char c;
    o.read_result = int(::read(p[0], &c, 1));
    int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    o.open_errno = fd < 0 ? errno : 0;
    if (fd >= 0) ::close(fd);
    termios tio;
    o.ioctl_errno = ::ioctl(p[0], TCGETS, &tio) < 0 ? errno : 0;
  });
  t.join();
  ::close(p[0]);
  ::close(p[1]);
  return o;
}
}  // namespace

TEST(Seccomp, VcpuThreadMayNotOpenFilesOrRead) {
  auto o = probe(ThreadRole::kVcpu);
  ASSERT_TRUE(o.installed);
  EXPECT_TRUE(o.wrote);                 // console output
#if !defined(__SANITIZE_ADDRESS__)
  EXPECT_EQ(o.read_result, -1);         // vCPU threads do not read (sanitizer builds allow it)
#endif
  EXPECT_EQ(o.open_errno, EPERM);
  EXPECT_EQ(o.ioctl_errno, EPERM);      // only KVM_RUN and KVM_IRQ_LINE
  // The filter stayed in that thread: this one can still open files.
  int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0);
  ::close(fd);
}

TEST(Seccomp, IoThreadReadsButMayNotOpen) {
  auto o = probe(ThreadRole::kIo);
  ASSERT_TRUE(o.installed);
  EXPECT_TRUE(o.wrote);
  EXPECT_EQ(o.read_result, 1);
  EXPECT_EQ(o.open_errno, EPERM);
  EXPECT_EQ(o.ioctl_errno, EPERM);
}

TEST(Seccomp, OffInstallsNothing) {
  std::thread t([] {
    install_thread_seccomp(ThreadRole::kVcpu, SeccompMode::kOff);
    int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    ::close(fd);
  });
  t.join();
}

TEST(Seccomp, NetThreadUsesInetSocketsOnly) {
  struct {
    int inet = -1, inet6 = -1, unix_errno = 0, netlink_errno = 0, write_open_errno = 0, read_open = -1,
        exec_errno = 0;
  } o;
  std::thread t([&] {
    install_thread_seccomp(ThreadRole::kNet, SeccompMode::kErrno);
    o.inet = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    o.inet6 = ::socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    o.unix_errno = ::socket(AF_UNIX, SOCK_STREAM, 0) < 0 ? errno : 0;
    o.netlink_errno = ::socket(AF_NETLINK, SOCK_RAW, 0) < 0 ? errno : 0;
    o.write_open_errno = ::open("/dev/null", O_WRONLY | O_CLOEXEC) < 0 ? errno : 0;
    o.read_open = ::open("/dev/null", O_RDONLY | O_CLOEXEC);  // libslirp reads /etc/resolv.conf
    char* argv[] = {nullptr};
    o.exec_errno = ::execve("/bin/true", argv, argv) < 0 ? errno : 0;
  });
  t.join();
  EXPECT_GE(o.inet, 0);
  EXPECT_GE(o.inet6, 0);
  EXPECT_EQ(o.unix_errno, EPERM);
  EXPECT_EQ(o.netlink_errno, EPERM);
  EXPECT_EQ(o.write_open_errno, EPERM);
  EXPECT_GE(o.read_open, 0);
  EXPECT_EQ(o.exec_errno, EPERM);
  for (int fd : {o.inet, o.inet6, o.read_open})
    if (fd >= 0) ::close(fd);
}
