// Per-thread seccomp filters (libseccomp) for the runner's threads, installed by each thread
// once the VM is set up, before it touches anything the guest controls: a vCPU thread may only
// run KVM_RUN and raise IRQ lines, write the console and eventfds, and manage memory and
// futexes; the I/O thread additionally reads, writes and syncs disks and waits in epoll; the
// network thread (user-mode networking, net_slirp.hpp, or a tap device) uses IPv4/IPv6 sockets
// and poll() and opens no file at all. The main role is for the thread that started the VM and
// waits for it (img2vm-vmm's main thread and its signal relay): waiting, signals, writing to the
// terminal, joining and tearing down.
// Everything else (exec, other socket families, ...) is refused; open and openat fail with
// EACCES in every mode (glibc's malloc and libslirp try on their own and cope). Every role may
// resume a sleep after SIGSTOP/SIGCONT (restart_syscall). Kill mode installs a process-wide
// SIGSYS handler that names the refused call on stderr before the process dies of SIGSYS.
#pragma once

#include <span>

namespace img2vm::vm {

// What a seccomp filter does with a refused system call.
enum class SeccompMode {
  kKill,   // a refused system call kills the process (SCMP_ACT_KILL_PROCESS), as Firecracker
  kErrno,  // a refused system call fails with EPERM (for embedders that must survive)
  kOff,    // no filter
};

// Which thread of the runner a filter is for; each gets only its own system calls.
enum class ThreadRole { kVcpu, kIo, kNet, kMain, kVsock };

// Installs the filter for the calling thread (and threads it creates later). Throws Error.
// `vhost_user_fds`: the vhost-user sockets a vCPU thread talks to when the guest's driver starts
// or resets a virtio-fs device; the kVcpu filter allows sendmsg and recvmsg on exactly those.
void install_thread_seccomp(ThreadRole role, SeccompMode mode,
                            std::span<const int> vhost_user_fds = {});

}  // namespace img2vm::vm
