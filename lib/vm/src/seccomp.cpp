#include "img2vm/vm/seccomp.hpp"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/kvm.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <termios.h>

#include <memory>
#include <string>

#include "img2vm/base/error.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define IMG2VM_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(undefined_behavior_sanitizer)
#define IMG2VM_SANITIZED 1
#endif
#endif

namespace img2vm::vm {

void install_thread_seccomp(ThreadRole role, SeccompMode mode,
                            std::span<const int> vhost_user_fds) {
  if (mode == SeccompMode::kOff) return;
#ifdef IMG2VM_SANITIZED
  // LeakSanitizer's check at exit runs on the main thread (a tracer thread that ptraces the
  // others and reads /proc): under this filter it cannot. Test builds only.
  if (role == ThreadRole::kMain) return;
#endif
  uint32_t deny = mode == SeccompMode::kKill ? SCMP_ACT_KILL_PROCESS : SCMP_ACT_ERRNO(EPERM);
  std::unique_ptr<void, decltype(&seccomp_release)> ctx(seccomp_init(deny), &seccomp_release);
  if (!ctx) throw Error(ErrorKind::kInternal, "seccomp_init failed");
  auto allow = [&](int nr) {
    int r = seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, nr, 0);
    if (r < 0) throw_errno("seccomp_rule_add", -r);
  };
  auto allow_ioctl = [&](unsigned long req) {
    int r = seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
                             SCMP_A1(SCMP_CMP_EQ, static_cast<scmp_datum_t>(req), 0));
    if (r < 0) throw_errno("seccomp_rule_add(ioctl)", -r);
  };
  // Common to all: memory (malloc), futexes and signals (std::mutex, the kick), time, exiting.
  // restart_syscall is how the kernel resumes a sleep that a stop interrupted (a futex or
  // poll with a timeout, nanosleep): SIGSTOP + SIGCONT (Ctrl-Z and fg, a debugger, a cgroup
  // freeze) makes every such thread call it. rt_sigreturn ends the kick signal's handler.
  for (int nr : {SCMP_SYS(mmap),           SCMP_SYS(munmap),
                 SCMP_SYS(mremap),         SCMP_SYS(madvise),
                 SCMP_SYS(mprotect),       SCMP_SYS(brk),
                 SCMP_SYS(futex),          SCMP_SYS(rt_sigreturn),
                 SCMP_SYS(rt_sigprocmask), SCMP_SYS(restart_syscall),
                 SCMP_SYS(sigaltstack),    SCMP_SYS(tgkill),
                 SCMP_SYS(getpid),         SCMP_SYS(gettid),
                 SCMP_SYS(clock_gettime),  SCMP_SYS(clock_nanosleep),
                 SCMP_SYS(nanosleep),      SCMP_SYS(sched_yield),
                 SCMP_SYS(exit),           SCMP_SYS(write),
                 SCMP_SYS(writev),         SCMP_SYS(close),
                 SCMP_SYS(rseq),           SCMP_SYS(set_robust_list)})
    allow(nr);
#ifdef IMG2VM_SANITIZED
  // The sanitizer runtimes probe memory with a pipe (UBSan's vptr check) and look up the
  // executable's name when reporting; test builds only.
  for (int nr :
       {SCMP_SYS(pipe), SCMP_SYS(pipe2), SCMP_SYS(mincore), SCMP_SYS(msync), SCMP_SYS(readlink),
        SCMP_SYS(readlinkat), SCMP_SYS(sched_getaffinity), SCMP_SYS(prctl), SCMP_SYS(read)})
    allow(nr);
#endif
  // glibc's abort path for a failed assertion or std::terminate.
  allow(SCMP_SYS(exit_group));
  allow_ioctl(KVM_IRQ_LINE);
  auto allow_if = [&](int nr, scmp_arg_cmp cmp) {
    int r = seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, nr, 1, cmp);
    if (r < 0) throw_errno("seccomp_rule_add", -r);
  };
  if (role == ThreadRole::kVcpu) {
    allow_ioctl(KVM_RUN);
    // DRIVER_OK and reset of a virtio-fs device are vhost-user messages to its backend, sent
    // and answered on this thread (the socket has send and receive timeouts: no poll needed).
    for (int fd : vhost_user_fds)
      for (int nr : {SCMP_SYS(sendmsg), SCMP_SYS(recvmsg)})
        allow_if(nr, SCMP_A0(SCMP_CMP_EQ, scmp_datum_t(fd), 0));
  } else if (role == ThreadRole::kNet) {
    // libslirp turns the guest's connections into host sockets: IPv4/IPv6 only (no netlink,
    // no unix sockets), non-blocking, polled with poll().
    for (int domain : {AF_INET, AF_INET6})
      allow_if(SCMP_SYS(socket), SCMP_A0(SCMP_CMP_EQ, scmp_datum_t(domain), 0));
    for (int nr :
         {SCMP_SYS(read), SCMP_SYS(poll), SCMP_SYS(ppoll), SCMP_SYS(connect), SCMP_SYS(bind),
          SCMP_SYS(listen), SCMP_SYS(accept), SCMP_SYS(accept4), SCMP_SYS(getsockname),
          SCMP_SYS(getpeername), SCMP_SYS(getsockopt), SCMP_SYS(setsockopt), SCMP_SYS(shutdown),
          SCMP_SYS(sendto), SCMP_SYS(recvfrom), SCMP_SYS(recvmsg)})
      allow(nr);
    for (int cmd : {F_GETFL, F_SETFL, F_GETFD, F_SETFD})
      allow_if(SCMP_SYS(fcntl), SCMP_A1(SCMP_CMP_EQ, scmp_datum_t(cmd), 0));
    allow_ioctl(FIONREAD);       // the size of a pending UDP datagram
    allow_ioctl(TUNSETOFFLOAD);  // the tap backend follows the guest driver's offloads
    allow_ioctl(TCGETS);         // glib's logging asks whether stderr is a terminal
    // No file is opened here: a memory bug in libslirp must not read the user's files and send
    // them out. The backend has read /etc/resolv.conf before (SlirpBackend's constructor), so
    // libslirp only stats it (at most once a second, to see whether it changed); when it did,
    // libslirp's attempt to re-read it fails (EACCES, whatever the mode: a rewritten
    // resolv.conf must not kill the VM) and it keeps the name server it had.
    for (int nr : {SCMP_SYS(open), SCMP_SYS(openat), SCMP_SYS(openat2), SCMP_SYS(creat)}) {
      int r = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EACCES), nr, 0);
      if (r < 0) throw_errno("seccomp_rule_add(open)", -r);
    }
    for (int nr : {SCMP_SYS(newfstatat), SCMP_SYS(fstat), SCMP_SYS(stat)}) allow(nr);
  } else if (role == ThreadRole::kVsock) {
    // The vsock device's host side: unix sockets only (accepting clients on its listening
    // socket, connecting to `<uds_path>_<port>`), non-blocking, watched with epoll; its queue
    // notifications are read from an eventfd. No file is opened.
    allow_if(SCMP_SYS(socket), SCMP_A0(SCMP_CMP_EQ, scmp_datum_t(AF_UNIX), 0));
    for (int nr : {SCMP_SYS(read), SCMP_SYS(epoll_wait), SCMP_SYS(epoll_pwait), SCMP_SYS(epoll_ctl),
                   SCMP_SYS(accept4), SCMP_SYS(connect), SCMP_SYS(sendto), SCMP_SYS(recvfrom),
                   SCMP_SYS(shutdown)})
      allow(nr);
  } else if (role == ThreadRole::kMain) {
    // The thread that waits for the VM, and the signal relay it started: waiting (futexes,
    // sigtimedwait), stopping the VM (eventfd writes, tgkill), reporting (writes), the
    // terminal (-t: its size, and its settings restored at the end), joining the VM's threads,
    // syncing the console output, and tearing everything down (munmap, close).
    for (int nr :
         {SCMP_SYS(rt_sigtimedwait), SCMP_SYS(fsync), SCMP_SYS(fstat), SCMP_SYS(newfstatat)})
      allow(nr);
    for (unsigned long req : {TIOCGWINSZ, TCGETS, TCSETS, TCSETSW, TCSETSF}) allow_ioctl(req);
  } else {
    for (int nr : {SCMP_SYS(read), SCMP_SYS(pread64), SCMP_SYS(pwrite64), SCMP_SYS(preadv),
                   SCMP_SYS(pwritev), SCMP_SYS(fdatasync), SCMP_SYS(fsync), SCMP_SYS(epoll_wait),
                   SCMP_SYS(epoll_pwait), SCMP_SYS(epoll_ctl), SCMP_SYS(lseek)})
      allow(nr);
  }
  int r = seccomp_load(ctx.get());
  if (r < 0) throw_errno("seccomp_load", -r);
}

}  // namespace img2vm::vm
