// Per-thread seccomp filters (libseccomp) for the runner's threads, installed by each thread
// once the VM is set up, before it touches anything the guest controls: a vCPU thread may only
// run KVM_RUN and raise IRQ lines, write the console and eventfds, and manage memory and
// futexes; the I/O thread additionally reads, writes and syncs disks and waits in epoll; the
// network thread (user-mode networking, net_slirp.hpp) uses IPv4/IPv6 sockets and poll(), and
// may open files read-only (libslirp re-reads /etc/resolv.conf to forward DNS).
// Everything else (exec, other socket families, ...) is refused.
#pragma once

namespace img2vm::vm {

enum class SeccompMode {
  kKill,   // a refused system call kills the process (SCMP_ACT_KILL_PROCESS), as Firecracker
  kErrno,  // a refused system call fails with EPERM (for embedders that must survive)
  kOff,    // no filter
};

enum class ThreadRole { kVcpu, kIo, kNet };

// Installs the filter for the calling thread (and threads it creates later). Throws Error.
void install_thread_seccomp(ThreadRole role, SeccompMode mode);

}  // namespace img2vm::vm
