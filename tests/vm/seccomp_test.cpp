// The runner's per-thread seccomp filters: allowed calls work, others are refused, and only in
// the thread that installed the filter; a filtered thread survives being stopped and continued.
#include "img2vm/vm/seccomp.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "vhost_user.hpp"
#include "virtio_mmio.hpp"

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
  EXPECT_TRUE(o.wrote);  // console output
#if !defined(__SANITIZE_ADDRESS__)
  EXPECT_EQ(o.read_result, -1);  // vCPU threads do not read (sanitizer builds allow it)
#endif
  EXPECT_EQ(o.open_errno, EACCES);
  EXPECT_EQ(o.ioctl_errno, EPERM);  // only KVM_RUN and KVM_IRQ_LINE
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
  EXPECT_EQ(o.open_errno, EACCES);
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
    int inet = -1, inet6 = -1, unix_errno = 0, netlink_errno = 0, write_open_errno = 0,
        read_open = -1, exec_errno = 0;
  } o;
  std::thread t([&] {
    install_thread_seccomp(ThreadRole::kNet, SeccompMode::kErrno);
    o.inet = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    o.inet6 = ::socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    o.unix_errno = ::socket(AF_UNIX, SOCK_STREAM, 0) < 0 ? errno : 0;
    o.netlink_errno = ::socket(AF_NETLINK, SOCK_RAW, 0) < 0 ? errno : 0;
    o.write_open_errno = ::open("/dev/null", O_WRONLY | O_CLOEXEC) < 0 ? errno : 0;
    o.read_open = ::open("/dev/null", O_RDONLY | O_CLOEXEC);  // no file at all, read-only or not
    char* argv[] = {nullptr};
    o.exec_errno = ::execve("/bin/true", argv, argv) < 0 ? errno : 0;
  });
  t.join();
  EXPECT_GE(o.inet, 0);
  EXPECT_GE(o.inet6, 0);
  EXPECT_EQ(o.unix_errno, EPERM);
  EXPECT_EQ(o.netlink_errno, EPERM);
  EXPECT_EQ(o.write_open_errno, EACCES);
  EXPECT_LT(o.read_open, 0);
  EXPECT_EQ(o.exec_errno, EPERM);
  for (int fd : {o.inet, o.inet6, o.read_open})
    if (fd >= 0) ::close(fd);
}

// libslirp may try to open /etc/resolv.conf again when it changed (and glib may open files when
// it logs): in kill mode too, an open in the network thread fails instead of killing the VM,
// and no file is opened, whatever the flags.
TEST(Seccomp, NetThreadOpensNoFileEvenInKillMode) {
  int open_result = 0, open_errno = 0, openat_result = 0, openat_errno = 0;
  std::thread t([&] {
    install_thread_seccomp(ThreadRole::kNet, SeccompMode::kKill);
    open_result = ::open("/etc/resolv.conf", O_RDONLY | O_CLOEXEC);
    open_errno = errno;
    openat_result = int(::syscall(SYS_openat, AT_FDCWD, "/etc/passwd", O_RDONLY | O_CLOEXEC));
    openat_errno = errno;
  });
  t.join();
  EXPECT_EQ(open_result, -1);
  EXPECT_EQ(open_errno, EACCES);
  EXPECT_EQ(openat_result, -1);
  EXPECT_EQ(openat_errno, EACCES);
}

// Kill mode still kills the whole process with SIGSYS (status 159), but first says on stderr
// which thread made which refused system call: without it, a VMM that died of its filter (a
// detached VM's, say) leaves no clue. Here the vsock thread asks for an IPv4 socket (41).
TEST(SeccompDeathTest, KillModeNamesTheRefusedSystemCallThenDiesOfSigsys) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        std::thread t([] {
          install_thread_seccomp(ThreadRole::kVsock, SeccompMode::kKill);
          (void)::socket(AF_INET, SOCK_STREAM, 0);
          (void)!::write(STDOUT_FILENO, "survived\n", 9);
        });
        t.join();
        std::_Exit(0);
      },
      ::testing::KilledBySignal(SIGSYS),
      "seccomp: the vsock thread made system call 41 \\(x86-64 number\\), which its filter "
      "refuses");
}

// glibc reads /proc/sys/vm/overcommit_memory the first time a thread's malloc arena gives memory
// back (arena.c, check_may_shrink_heap): a vsock thread that freed its connections' buffers
// under load killed a detached VM with SIGSYS. Every role answers open and openat with EACCES
// instead (glibc then releases the memory with madvise), in kill mode too; still, no file is
// opened. A fresh process (the threadsafe death-test style re-executes the binary), so that
// glibc has not read the file before.
TEST(SeccompDeathTest, EveryRoleSurvivesGlibcGivingAThreadArenaBack) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<ThreadRole> roles = {ThreadRole::kVcpu, ThreadRole::kIo, ThreadRole::kVsock,
                                   ThreadRole::kNet};
#if !defined(__SANITIZE_ADDRESS__)
  roles.push_back(ThreadRole::kMain);  // unfiltered in sanitizer builds (LeakSanitizer)
#endif
  for (ThreadRole role : roles) {
    EXPECT_EXIT(
        {
          int open_errno = 0;
          std::thread t([&] {
            install_thread_seccomp(role, SeccompMode::kKill);
            std::vector<void*> blocks;
            for (int i = 0; i < 256; ++i) blocks.push_back(std::malloc(32 * 1024));
            for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) std::free(*it);
            open_errno = ::open("/etc/hostname", O_RDONLY | O_CLOEXEC) < 0 ? errno : 0;
          });
          t.join();
          std::_Exit(open_errno == EACCES ? 0 : 1);
        },
        ::testing::ExitedWithCode(0), "")
        << "role " << int(role);
  }
}

// The thread that waits for the VM (img2vm-vmm's main thread): waiting for signals, writing and
// the terminal's ioctls work; opening files, sockets, exec and other ioctls do not.
TEST(Seccomp, MainThreadWaitsAndWritesOnly) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "sanitizer builds leave the main thread unfiltered (LeakSanitizer's exit check)";
#endif
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  struct {
    bool wrote = false;
    int sigwait_errno = 0, open_errno = 0, socket_errno = 0, exec_errno = 0, winsize_errno = 0,
        other_ioctl_errno = 0, read_result = -2;
  } o;
  std::thread t([&] {
    install_thread_seccomp(ThreadRole::kMain, SeccompMode::kErrno);
    o.wrote = ::write(p[1], "x", 1) == 1;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    struct timespec zero {};
    o.sigwait_errno = ::sigtimedwait(&set, nullptr, &zero) < 0 ? errno : 0;
    o.open_errno = ::open("/dev/null", O_RDONLY | O_CLOEXEC) < 0 ? errno : 0;
    o.socket_errno = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0) < 0 ? errno : 0;
    char* argv[] = {nullptr};
    o.exec_errno = ::execve("/bin/true", argv, argv) < 0 ? errno : 0;
    winsize ws{};
    o.winsize_errno = ::ioctl(p[0], TIOCGWINSZ, &ws) < 0 ? errno : 0;
    int n = 0;
    o.other_ioctl_errno = ::ioctl(p[0], FIONREAD, &n) < 0 ? errno : 0;
    char c;
    o.read_result = int(::read(p[0], &c, 1));
  });
  t.join();
  ::close(p[0]);
  ::close(p[1]);
  EXPECT_TRUE(o.wrote);
  EXPECT_EQ(o.sigwait_errno, EAGAIN) << "sigtimedwait: nothing pending";
  EXPECT_EQ(o.open_errno, EACCES);
  EXPECT_EQ(o.socket_errno, EPERM);
  EXPECT_EQ(o.exec_errno, EPERM);
  EXPECT_EQ(o.winsize_errno, ENOTTY) << "TIOCGWINSZ reaches the kernel (a pipe is no terminal)";
  EXPECT_EQ(o.other_ioctl_errno, EPERM);
#if !defined(__SANITIZE_ADDRESS__)
  EXPECT_EQ(o.read_result, -1);  // sanitizer builds allow read
#endif
}

namespace {

// The state letter of task `tid` of process `pid` (R, S, T, ...), or 0 once it is gone.
char task_state(pid_t pid, pid_t tid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return 0;
  auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() ? line[close + 2] : 0;
}

// Waits (bounded) until `pred` holds for the task's state.
template <class Pred>
bool wait_state(pid_t pid, pid_t tid, Pred pred) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred(task_state(pid, tid))) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

}  // namespace

// SIGSTOP then SIGCONT (Ctrl-Z and fg, a debugger, a cgroup freeze) interrupts every sleeping
// thread; one that slept with a timeout resumes through restart_syscall. A child process with a
// thread under each role's filter (kill mode) sleeps in a futex with a timeout, is stopped and
// continued, and must then wake normally when the word changes, not die of SIGSYS.
TEST(Seccomp, EveryRoleSurvivesStopAndContinue) {
  for (ThreadRole role : {ThreadRole::kVcpu, ThreadRole::kIo, ThreadRole::kNet, ThreadRole::kMain,
                          ThreadRole::kVsock}) {
    SCOPED_TRACE("role " + std::to_string(int(role)));
    // The futex word, shared with the child.
    void* mem = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(mem, MAP_FAILED);
    auto* word = static_cast<std::atomic<uint32_t>*>(mem);
    word->store(0);
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      std::thread t([&] {
        install_thread_seccomp(role, SeccompMode::kKill);
        pid_t tid = pid_t(::syscall(SYS_gettid));
        (void)!::write(ready[1], &tid, sizeof tid);
        while (word->load() == 0) {
          struct timespec limit {
            60, 0
          };
          ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, 0, &limit, nullptr,
                    0);
        }
      });
      t.join();
      ::_exit(0);
    }
    ::close(ready[1]);
    pid_t tid = 0;
    ASSERT_EQ(::read(ready[0], &tid, sizeof tid), ssize_t(sizeof tid));
    ::close(ready[0]);
    // Asleep in the futex (the only thing it does after writing), then stopped, then running again.
    EXPECT_TRUE(wait_state(child, tid, [](char s) { return s == 'S'; }));
    ASSERT_EQ(::kill(child, SIGSTOP), 0);
    EXPECT_TRUE(wait_state(child, tid, [](char s) { return s == 'T' || s == 0; }));
    ASSERT_EQ(::kill(child, SIGCONT), 0);
    EXPECT_TRUE(wait_state(child, tid, [](char s) { return s != 'T'; }));
    word->store(1);
    ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, 1, nullptr, nullptr, 0);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << (WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                : "exit " + std::to_string(WEXITSTATUS(status)));
    ::munmap(mem, 4096);
  }
}

// A vCPU thread starts and resets virtio-fs devices (DRIVER_OK, status 0): it talks vhost-user on
// the backends' sockets, and on no other.
TEST(Seccomp, VcpuThreadTalksVhostUserOnItsSocketsOnly) {
  int sv[2], other[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, other), 0);
  img2vm::UniqueFd peer(sv[1]), o0(other[0]), o1(other[1]);
  // The backend's reply to GET_FEATURES, written in advance.
  const uint32_t hdr[3] = {vhost_user::kGetFeatures, vhost_user::kVersion | vhost_user::kFlagReply,
                           8};
  const uint64_t features = kVirtioFVersion1;
  ASSERT_EQ(::write(peer.get(), hdr, sizeof hdr), ssize_t(sizeof hdr));
  ASSERT_EQ(::write(peer.get(), &features, sizeof features), ssize_t(sizeof features));
  VhostUserFrontend fe(img2vm::UniqueFd(sv[0]), "backend", std::chrono::milliseconds(1000));
  uint64_t got = 0;
  int other_errno = 0;
  std::thread t([&] {
    const int fds[] = {fe.fd()};
    install_thread_seccomp(ThreadRole::kVcpu, SeccompMode::kErrno, fds);
    try {
      got = fe.handshake();
    } catch (const img2vm::Error& e) {
      ADD_FAILURE() << e.what();
    }
    msghdr mh{};
    iovec iov{const_cast<uint32_t*>(hdr), sizeof hdr};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    other_errno = ::sendmsg(o0.get(), &mh, MSG_NOSIGNAL) < 0 ? errno : 0;
  });
  t.join();
  EXPECT_EQ(got, kVirtioFVersion1);
  EXPECT_EQ(other_errno, EPERM);
}
