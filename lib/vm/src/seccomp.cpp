#include "img2vm/vm/seccomp.hpp"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/kvm.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/ucontext.h>
#include <termios.h>
#include <unistd.h>

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

namespace {
thread_local ThreadRole t_role = ThreadRole::kMain;

const char* role_name(ThreadRole r) {
  switch (r) {
    case ThreadRole::kVcpu:
      return "vCPU";
    case ThreadRole::kIo:
      return "I/O";
    case ThreadRole::kNet:
      return "network";
    case ThreadRole::kMain:
      return "main";
    case ThreadRole::kVsock:
      return "vsock";
  }
  return "?";
}

// Async-signal-safe: appends `s` / the decimal `v` at `p`, never past `end`.
char* put(char* p, char* end, const char* s) {
  while (*s && p < end) *p++ = *s++;
  return p;
}
char* put(char* p, char* end, unsigned long v) {
  char digits[24];
  int n = 0;
  do digits[n++] = char('0' + v % 10);
  while ((v /= 10) && n < 24);
  while (n && p < end) *p++ = digits[--n];
  return p;
}

// Kill mode traps instead of killing at once (as Firecracker does): this handler names the
// refused system call on stderr (which a detached VM's monitor keeps in its log), then the
// signal is raised again with its default action (SA_RESETHAND), so the process still dies of
// SIGSYS (status 159). Only write, getpid, gettid, tgkill and rt_sigreturn are used, which
// every filter allows.
void on_sigsys(int, siginfo_t* info, void* context) {
  char msg[400];
  char* end = msg + sizeof msg;
  char* p = put(msg, end, "img2vm-vmm: seccomp: the ");
  p = put(p, end, role_name(t_role));
  p = put(p, end, " thread made system call ");
  p = put(p, end, static_cast<unsigned long>(info->si_syscall));
  p = put(p, end, " (x86-64 number)");
  // For open and openat, the file: it tells which library asked.
  const auto* uc = static_cast<const ucontext_t*>(context);
  const char* path = nullptr;
  if (info->si_syscall == SYS_open)
    path = reinterpret_cast<const char*>(uc->uc_mcontext.gregs[REG_RDI]);
  if (info->si_syscall == SYS_openat)
    path = reinterpret_cast<const char*>(uc->uc_mcontext.gregs[REG_RSI]);
  if (path) {
    p = put(p, end, " on \"");
    for (int i = 0; i < 160 && path[i] && p < end; ++i) *p++ = path[i];
    p = put(p, end, "\"");
  }
  p = put(p, end, ", which its filter refuses; the VM is stopped\n");
  (void)!::write(STDERR_FILENO, msg, size_t(p - msg));
  ::syscall(SYS_tgkill, ::getpid(), ::gettid(), SIGSYS);  // delivered after the handler returns
}

void install_sigsys_report() {
  struct sigaction sa {};
  sa.sa_sigaction = on_sigsys;
  sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGSYS, &sa, nullptr);
  sigset_t sys;
  sigemptyset(&sys);
  sigaddset(&sys, SIGSYS);
  pthread_sigmask(SIG_UNBLOCK, &sys, nullptr);  // a blocked SIGSYS would die unreported
}
}  // namespace

void install_thread_seccomp(ThreadRole role, SeccompMode mode,
                            std::span<const int> vhost_user_fds) {
  if (mode == SeccompMode::kOff) return;
#ifdef IMG2VM_SANITIZED
  // LeakSanitizer's check at exit runs on the main thread (a tracer thread that ptraces the
  // others and reads /proc): under this filter it cannot. Test builds only.
  if (role == ThreadRole::kMain) return;
#endif
  t_role = role;
  if (mode == SeccompMode::kKill) install_sigsys_report();
  uint32_t deny = mode == SeccompMode::kKill ? SCMP_ACT_TRAP : SCMP_ACT_ERRNO(EPERM);
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
  // No thread opens a file, but glibc may try on its own and copes with a refusal, so an open
  // fails with EACCES in every mode rather than killing the VM: malloc reads
  // /proc/sys/vm/overcommit_memory the first time a thread's arena gives memory back (and
  // uses madvise when it cannot), libslirp re-reads a changed /etc/resolv.conf (net thread).
  for (int nr : {SCMP_SYS(open), SCMP_SYS(openat), SCMP_SYS(openat2), SCMP_SYS(creat)}) {
    int r = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EACCES), nr, 0);
    if (r < 0) throw_errno("seccomp_rule_add(open)", -r);
  }
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
    // No file is opened here (the common rule above): a memory bug in libslirp must not read
    // the user's files and send them out. The backend has read /etc/resolv.conf before
    // (SlirpBackend's constructor), so libslirp only stats it (at most once a second, to see
    // whether it changed); when it did, libslirp's attempt to re-read it fails and it keeps
    // the name server it had.
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
