#include "img2vm/vm/machine.hpp"

#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "boot.hpp"
#include "bus.hpp"
#include "guest_memory.hpp"
#include "guest_ports.hpp"
#include "i8042.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/guestabi/ports.hpp"
#include "img2vm/vm/net_tap.hpp"
#include "kvm_state.hpp"
#include "mmio_devices.hpp"
#include "snapshot_file.hpp"
#include "uart.hpp"
#include "vcpu_setup.hpp"
#include "virtio_blk.hpp"
#include "virtio_fs.hpp"
#include "virtio_mmio.hpp"
#include "virtio_net.hpp"
#include "virtio_vsock.hpp"

namespace img2vm::vm {

using Clock = std::chrono::steady_clock;
using std::chrono::microseconds;

const char* to_string(ExitReason r) noexcept {
  switch (r) {
    case ExitReason::kExited:
      return "exited";
    case ExitReason::kInitFailed:
      return "init-failed";
    case ExitReason::kReboot:
      return "reboot";
    case ExitReason::kTripleFault:
      return "triple-fault";
    case ExitReason::kKvmError:
      return "kvm-error";
    case ExitReason::kTimeout:
      return "timeout";
    case ExitReason::kStopped:
      return "stopped";
  }
  return "?";
}

int MachineResult::host_exit_code() const noexcept {
  switch (reason) {
    case ExitReason::kExited:
      return status & 0xff;
    case ExitReason::kInitFailed:
      return 122;
    case ExitReason::kReboot:
    case ExitReason::kTripleFault:
      return 123;
    case ExitReason::kTimeout:
      return 124;
    case ExitReason::kKvmError:
      return 125;
    case ExitReason::kStopped:
      return 130;
  }
  return 125;
}

std::string MachineResult::describe() const {
  switch (reason) {
    case ExitReason::kExited:
      return "exited with status " + std::to_string(status);
    case ExitReason::kInitFailed:
      return "the guest init failed with code " + std::to_string(status) +
             (detail.empty() ? "" : ": " + detail);
    default:
      return detail.empty() ? to_string(reason) : detail;
  }
}

namespace {

// A whole file mapped read-only (RAII).
class ReadOnlyMapping {
 public:
  explicit ReadOnlyMapping(const std::filesystem::path& path) {
    UniqueFd fd = open_file(path, O_RDONLY);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) throw_errno("cannot stat " + path.string());
    if (!S_ISREG(st.st_mode))
      throw Error(ErrorKind::kInvalidArgument, path.string() + " is not a regular file");
    size_ = size_t(st.st_size);
    if (size_ == 0) return;
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (p == MAP_FAILED) throw_errno("cannot map " + path.string());
    data_ = static_cast<const uint8_t*>(p);
  }
  ~ReadOnlyMapping() { reset(); }
  void reset() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
  }
  ReadOnlyMapping(const ReadOnlyMapping&) = delete;
  ReadOnlyMapping& operator=(const ReadOnlyMapping&) = delete;
  std::span<const uint8_t> bytes() const { return {data_, size_}; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

constexpr unsigned kMaxDisks = 8;
constexpr const char* kResetWithoutStatus =
    "the guest reset the machine without reporting an exit status (kernel panic or reboot)";

int kick_signal() { return SIGRTMIN + 6; }

void install_kick_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    ::sigaction(kick_signal(), &sa, nullptr);
  });
}

// Threads of the VM take no process signals except the kick.
void block_signals(bool allow_kick) {
  sigset_t all;
  sigfillset(&all);
  if (allow_kick) sigdelset(&all, kick_signal());
  sigdelset(&all, SIGSYS);  // seccomp's report of a refused system call (seccomp.cpp)
  pthread_sigmask(SIG_SETMASK, &all, nullptr);
}

int xioctl(int fd, unsigned long req, unsigned long arg, const char* what) {
  int r;
  do r = ::ioctl(fd, req, arg);
  while (r < 0 && errno == EINTR);
  if (r < 0) throw_errno(std::string("KVM: ") + what);
  return r;
}
template <typename T>
int xioctl(int fd, unsigned long req, T* arg, const char* what) {
  return xioctl(fd, req, reinterpret_cast<unsigned long>(arg), what);
}

struct Vcpu {
  unsigned id = 0;
  UniqueFd fd;
  kvm_run* run = nullptr;
  size_t run_size = 0;
  std::thread thread;
  std::atomic<bool> started{false};
  CpuidTable cpuid;  // what it was given (a snapshot records it)
  Vcpu() = default;
  Vcpu(const Vcpu&) = delete;
  Vcpu& operator=(const Vcpu&) = delete;
  ~Vcpu() {
    if (run) ::munmap(run, run_size);
  }
};

// A virtio device's transport in its MMIO slot, with the KVM plumbing: the guest's queue
// notifications arrive on an ioeventfd, its interrupt goes out through an irqfd.
struct MmioDevice {
  std::unique_ptr<VirtioMmio> transport;
  UniqueFd notify;  // ioeventfd on QueueNotify
  UniqueFd irq;     // irqfd
  MmioSlot slot;
};

// Served by the I/O thread.
struct Disk {
  std::unique_ptr<VirtioBlk> blk;
  MmioDevice mmio;  // after the device it serves
};

// The NIC: served by the network thread, which runs the backend's event loop and also takes
// the guest's queue notifications (so libslirp's sockets stay out of the I/O thread's filter).
struct Nic {
  std::shared_ptr<NetBackend> backend;
  std::unique_ptr<VirtioNet> dev;  // after the backend: detaches from it when destroyed
  MmioDevice mmio;
};

// A virtio-fs device: its queues are served by the vhost-user backend, which the vCPU threads
// talk to (DRIVER_OK, reset) and whose hang-up the I/O thread watches.
struct SharedDir {
  std::unique_ptr<VirtioFs> dev;
  MmioDevice mmio;
};

// The vsock device: served by its own thread, which takes the guest's queue notifications and
// the host sockets' events (so unix sockets stay out of the other threads' filters).
struct Vsock {
  std::unique_ptr<VirtioVsock> dev;
  MmioDevice mmio;
};

}  // namespace

struct Machine::Impl {
  MachineConfig cfg;
  Clock::time_point t0 = Clock::now();
  std::string cmdline;
  UniqueFd kvm, vm;
  bool tsc_deadline = false;  // KVM_CAP_TSC_DEADLINE_TIMER
  std::unique_ptr<GuestMemory> mem;
  LoadedKernel kernel;
  uint64_t initrd_addr = 0, initrd_size = 0;
  // Guest accesses go through the buses: unclaimed ports read as 0xff, unclaimed MMIO as 0.
  Bus port_bus{"I/O port", 0xff};
  Bus mmio_bus{"MMIO", 0};
  MmioDeviceManager mmio_devices{mmio_bus};
  std::unique_ptr<Uart8250> uart;
  std::unique_ptr<Uart8250> stderr_uart;  // COM2: output only
  std::mutex i8042_mu;
  I8042 i8042;
  GuestPorts guest_ports{{
      .exited = [this](uint8_t status) { finish(ExitReason::kExited, status, {}); },
      .init_failed = [this](uint8_t code) { finish(ExitReason::kInitFailed, code, {}); },
      .boot_mark = [this](uint8_t m) { boot_mark(m); },
  }};
  std::vector<std::unique_ptr<Disk>> disks;
  std::unique_ptr<Nic> nic;
  std::vector<std::unique_ptr<SharedDir>> shared_dirs;
  std::thread net_thread;
  std::unique_ptr<Vsock> vsock;
  std::thread vsock_thread;
  std::vector<std::unique_ptr<Vcpu>> vcpus;
  UniqueFd stop_fd;
  UniqueFd exec_fd;  // signalled at the workload's exec (BOOT_MARK 2): console input may flow
  std::thread io_thread;
  bool started = false, joined = false;

  std::mutex mu;
  std::condition_variable cv;
  std::optional<MachineResult> result;
  BootTimings timings;
  std::atomic<bool> ending{false};
  // Pausing (snapshots): vCPU threads park, under mu, while pause_requested holds.
  std::atomic<bool> pause_requested{false};
  unsigned parked = 0;
  bool snapshot_point_seen = false;

  microseconds now() const { return std::chrono::duration_cast<microseconds>(Clock::now() - t0); }

  void finish(ExitReason reason, int status, std::string detail) {
    {
      std::lock_guard lk(mu);
      if (result) return;
      MachineResult r;
      r.reason = reason;
      r.status = status;
      r.detail = std::move(detail);
      timings.ended = now();
      result = std::move(r);
    }
    ending = true;
    for (auto& v : vcpus) {
      __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
      if (v->started && v->thread.joinable() && v->thread.get_id() != std::this_thread::get_id())
        pthread_kill(v->thread.native_handle(), kick_signal());
    }
    uint64_t one = 1;
    if (stop_fd) (void)!::write(stop_fd.get(), &one, sizeof one);
    cv.notify_all();
  }

  // Records the time of a mark; true the first time only.
  bool mark(std::optional<microseconds>& slot) {
    std::lock_guard lk(mu);
    if (slot) return false;
    slot = now();
    return true;
  }

  void set_irq_line(unsigned irq, bool level) {
    kvm_irq_level l{};
    l.irq = irq;
    l.level = level ? 1 : 0;
    if (::ioctl(vm.get(), KVM_IRQ_LINE, &l) != 0)
      finish(ExitReason::kKvmError, 0,
             "KVM_IRQ_LINE failed for IRQ " + std::to_string(irq) + ": " + std::strerror(errno));
  }

  static void write_byte(int fd, uint8_t c) {
    if (fd < 0) return;
    for (;;) {
      ssize_t n = ::write(fd, &c, 1);
      if (n >= 0 || errno != EINTR) return;
    }
  }

  void boot_mark(uint8_t m) {
    if (m == guestabi::kMarkInitStarted) {
      mark(timings.init_started);
    } else if (m == guestabi::kMarkWorkloadCreated) {
      if (mark(timings.workload_created) && cfg.ready_fd >= 0) (void)!::write(cfg.ready_fd, "C", 1);
    } else if (m == guestabi::kMarkSnapshotPoint) {
      if (!cfg.pause_at_snapshot_point) return;
      {
        std::lock_guard lk(mu);
        if (snapshot_point_seen) return;
        snapshot_point_seen = true;
      }
      request_pause();  // this vCPU parks once it is back in its loop
    } else if (m == guestabi::kMarkWorkloadExec) {
      if (mark(timings.workload_exec) && cfg.ready_fd >= 0) (void)!::write(cfg.ready_fd, "R", 1);
      uint64_t one = 1;
      if (exec_fd) (void)!::write(exec_fd.get(), &one, sizeof one);
    }
  }

  // Asks every vCPU to leave the guest and park (vcpu_loop).
  void request_pause() {
    pause_requested = true;
    for (auto& v : vcpus) {
      __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
      if (v->started && v->thread.joinable() && v->thread.get_id() != std::this_thread::get_id())
        pthread_kill(v->thread.native_handle(), kick_signal());
    }
  }

  // A vCPU asked to pause: its last exit is completed by a KVM_RUN that returns at once
  // (immediate_exit), so that its registers are consistent (an IN's value in RAX, the RIP past
  // the instruction), then it waits until resumed or the VM ends.
  void park(Vcpu& v) {
    __atomic_store_n(&v.run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    while (::ioctl(v.fd.get(), KVM_RUN, 0) == 0) {
    }
    std::unique_lock lk(mu);
    ++parked;
    cv.notify_all();
    cv.wait(lk, [&] { return !pause_requested || ending; });
    --parked;
    if (!ending) __atomic_store_n(&v.run->immediate_exit, 0, __ATOMIC_SEQ_CST);
  }

  bool all_parked() const { return parked == vcpus.size(); }

  void mmio(uint64_t addr, bool write, uint8_t* data, unsigned len) {
    if (len > 8) return;
    mmio_bus.access(addr, write, data, len);
  }

  void vcpu_loop(Vcpu& v) {
    block_signals(true);
    try {
      install_thread_seccomp(ThreadRole::kVcpu, cfg.seccomp, vhost_user_fds());
    } catch (const std::exception& e) {
      finish(ExitReason::kKvmError, 0, std::string("vCPU thread: ") + e.what());
      return;
    }
    if (v.id == 0) mark(timings.first_entry);
    kvm_run* run = v.run;
    while (!ending) {
      if (pause_requested) {
        park(v);
        continue;
      }
      int r = ::ioctl(v.fd.get(), KVM_RUN, 0);
      if (r < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        finish(ExitReason::kKvmError, 0,
               std::string("KVM_RUN failed on vCPU ") + std::to_string(v.id) + ": " +
                   std::strerror(errno));
        return;
      }
      switch (run->exit_reason) {
        case KVM_EXIT_IO: {
          uint64_t bytes = uint64_t(run->io.size) * run->io.count;
          if (run->io.data_offset > v.run_size || bytes > v.run_size - run->io.data_offset) {
            finish(ExitReason::kKvmError, 0, "KVM reported port I/O outside the run area");
            return;
          }
          auto* data = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
          for (uint32_t c = 0; c < run->io.count; ++c)
            port_bus.access(run->io.port, run->io.direction == KVM_EXIT_IO_OUT,
                            data + uint64_t(c) * run->io.size, run->io.size);
          break;
        }
        case KVM_EXIT_MMIO:
          mmio(run->mmio.phys_addr, run->mmio.is_write, run->mmio.data, run->mmio.len);
          break;
        case KVM_EXIT_SHUTDOWN:
          finish(ExitReason::kTripleFault, 0,
                 "the guest triple-faulted (vCPU " + std::to_string(v.id) + ")");
          return;
        case KVM_EXIT_SYSTEM_EVENT:
          if (run->system_event.type == KVM_SYSTEM_EVENT_CRASH)
            finish(ExitReason::kReboot, 0, "the guest reported a crash");
          else if (run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN)
            finish(ExitReason::kReboot, 0,
                   "the guest powered off without reporting an exit status");
          else
            finish(ExitReason::kReboot, 0, kResetWithoutStatus);
          return;
        case KVM_EXIT_HLT:
          finish(ExitReason::kKvmError, 0,
                 "vCPU " + std::to_string(v.id) + " halted outside the in-kernel irqchip");
          return;
        case KVM_EXIT_FAIL_ENTRY:
          finish(
              ExitReason::kKvmError, 0, "KVM could not enter the guest (hardware reason 0x" + [&] {
                char b[32];
                std::snprintf(b, sizeof b, "%llx",
                              (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
                return std::string(b);
              }() + ")");
          return;
        case KVM_EXIT_INTERNAL_ERROR:
          finish(
              ExitReason::kKvmError, 0,
              run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION
                  ? "KVM could not emulate a guest instruction (vCPU " + std::to_string(v.id) + ")"
                  : "KVM internal error " + std::to_string(run->internal.suberror) + " (vCPU " +
                        std::to_string(v.id) + ")");
          return;
        case KVM_EXIT_INTR:
          break;
        default:
          finish(ExitReason::kKvmError, 0,
                 "unexpected KVM exit " + std::to_string(run->exit_reason));
          return;
      }
    }
  }

  void io_loop() {
    block_signals(false);
    try {
      UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
      if (!ep) throw_errno("epoll_create1");
      auto add = [&](int fd, uint64_t tag) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = tag;
        return ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) == 0;
      };
      constexpr uint64_t kStop = ~0ull, kConsole = ~1ull, kExec = ~2ull, kFsBase = 1ull << 32;
      add(stop_fd.get(), kStop);
      // A vhost-user backend that goes away (virtiofsd crashed or was killed) ends the VM: the
      // guest's requests to it would wait forever. Only the hang-up is watched; the replies on
      // that socket are read by the vCPU thread that asked.
      for (size_t i = 0; i < shared_dirs.size(); ++i) {
        epoll_event ev{};
        ev.events = EPOLLRDHUP;
        ev.data.u64 = kFsBase + i;
        if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, shared_dirs[i]->dev->backend().fd(), &ev) != 0)
          throw_errno("epoll_ctl");
      }
      for (size_t i = 0; i < disks.size(); ++i) add(disks[i]->mmio.notify.get(), i);
      // Held console input waits for the workload's exec: bytes sent earlier would be eaten by
      // the kernel's serial driver and tty setup before anyone reads them.
      bool hold = cfg.console_in_fd >= 0 && cfg.console_input == ConsoleInput::kAtWorkloadExec;
      if (hold) add(exec_fd.get(), kExec);
      // A regular file or /dev/null cannot be polled (epoll says EPERM): such input is read
      // whenever the UART has room ("plain"), every 10 ms.
      bool console_plain = false;
      auto start_console = [&] {
        if (add(cfg.console_in_fd, kConsole)) return true;
        if (errno == EPERM)
          console_plain = true;
        else
          guest_ports.close_input();  // cannot read it at all: as an empty input
        return false;
      };
      // Reads what fits into the UART; false when the input has ended (EOF or an error).
      auto feed_console = [&] {
        uint8_t buf[Uart8250::kFifoSize];
        ssize_t r = ::read(cfg.console_in_fd, buf, uart->input_space());
        if (r > 0) {
          guest_ports.add_input_bytes(uint32_t(uart->push_input(buf, size_t(r))));
          return true;
        }
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) return true;
        guest_ports.close_input();  // the guest's init closes the workload's stdin after them
        return false;
      };
      bool console = cfg.console_in_fd >= 0 && !hold && start_console();
      bool console_paused = false;
      install_thread_seccomp(ThreadRole::kIo, cfg.seccomp);
      while (!ending) {
        epoll_event evs[16];
        int n = ::epoll_wait(ep.get(), evs, 16, console_paused || console_plain ? 10 : -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw_errno("epoll_wait");
        while (console_plain && uart->input_space() > 0)
          if (!feed_console()) console_plain = false;
        if (console_paused && uart->input_space() > 0) {
          add(cfg.console_in_fd, kConsole);
          console_paused = false;
        }
        for (int k = 0; k < n; ++k) {
          uint64_t tag = evs[k].data.u64;
          if (tag == kStop) return;
          if (tag == kExec) {
            ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, exec_fd.get(), nullptr);
            console = start_console();
            continue;
          }
          if (tag == kConsole) {
            if (uart->input_space() == 0) {
              ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, cfg.console_in_fd, nullptr);
              console_paused = true;
              continue;
            }
            if (!feed_console()) {
              ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, cfg.console_in_fd, nullptr);
              console = false;
            }
            continue;
          }
          if (tag >= kFsBase && tag - kFsBase < shared_dirs.size()) {
            const auto& dev = *shared_dirs[tag - kFsBase]->dev;
            finish(ExitReason::kKvmError, 0,
                   "virtio-fs '" + dev.tag() + "': " + dev.backend().name() +
                       " closed its connection (the backend exited?)");
            return;
          }
          if (tag < disks.size()) {
            uint64_t cnt;
            (void)!::read(disks[tag]->mmio.notify.get(), &cnt, sizeof cnt);
            disks[tag]->mmio.transport->notify();
          }
        }
      }
      (void)console;
    } catch (const std::exception& e) {
      finish(ExitReason::kKvmError, 0, std::string("I/O thread: ") + e.what());
    }
  }

  void net_loop() {
    block_signals(false);
    try {
      install_thread_seccomp(ThreadRole::kNet, cfg.seccomp);
      const NetBackend::Watch watches[] = {{stop_fd.get(), [] { return false; }},
                                           {nic->mmio.notify.get(), [this] {
                                              uint64_t cnt;
                                              (void)!::read(nic->mmio.notify.get(), &cnt,
                                                            sizeof cnt);
                                              nic->mmio.transport->notify();
                                              return true;
                                            }}};
      nic->backend->run(watches);
    } catch (const std::exception& e) {
      finish(ExitReason::kKvmError, 0, std::string("network thread: ") + e.what());
    }
  }

  void vsock_loop() {
    block_signals(false);
    try {
      UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
      if (!ep) throw_errno("epoll_create1");
      constexpr uint64_t kStop = 0, kNotify = 1, kHost = 2;
      for (auto [fd, tag] :
           {std::pair{stop_fd.get(), kStop}, std::pair{vsock->mmio.notify.get(), kNotify},
            std::pair{vsock->dev->poll_fd(), kHost}}) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = tag;
        if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) != 0) throw_errno("epoll_ctl");
      }
      install_thread_seccomp(ThreadRole::kVsock, cfg.seccomp);
      while (!ending) {
        epoll_event evs[4];
        int n = ::epoll_wait(ep.get(), evs, 4, vsock->dev->timeout_ms());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw_errno("epoll_wait");
        bool notified = false;
        for (int k = 0; k < n; ++k) {
          if (evs[k].data.u64 == kStop) return;
          if (evs[k].data.u64 == kNotify) {
            uint64_t cnt;
            (void)!::read(vsock->mmio.notify.get(), &cnt, sizeof cnt);
            notified = true;
          }
        }
        vsock->dev->handle_host();  // also expires deadlines (n == 0)
        if (notified) vsock->mmio.transport->notify();
      }
    } catch (const std::exception& e) {
      finish(ExitReason::kKvmError, 0, std::string("vsock thread: ") + e.what());
    }
  }

  void join_all() {
    if (joined) return;
    joined = true;
    for (auto& v : vcpus)
      if (v->thread.joinable()) v->thread.join();
    if (io_thread.joinable()) io_thread.join();
    if (net_thread.joinable()) net_thread.join();
    if (vsock_thread.joinable()) vsock_thread.join();
    for (int fd : {cfg.console_out_fd, cfg.console_err_fd})
      if (fd >= 0) ::fsync(fd);  // best effort; fails on pipes
  }

  // create_vm() on a thread of its own while the constructing thread goes on, joined by wait()
  // (which rethrows its error) or else by the destructor. KVM_CREATE_VM can wait for an RCU
  // grace period (Linux 6.1 starts the VM's NX huge page recovery thread there, and moving it
  // into the caller's cgroups synchronizes RCU): ~12 ms of an otherwise idle CPU in the nested
  // rig (a grace period on a host too; not measured here).
  class VmCreation {
   public:
    explicit VmCreation(Impl& m)
        : thread_([this, &m] {
            try {
              m.create_vm();
            } catch (...) {
              error_ = std::current_exception();
            }
          }) {}
    VmCreation(const VmCreation&) = delete;
    VmCreation& operator=(const VmCreation&) = delete;
    ~VmCreation() {
      if (thread_.joinable()) thread_.join();
    }
    void wait() {
      thread_.join();
      if (error_) std::rethrow_exception(error_);
    }

   private:
    std::exception_ptr error_;
    std::thread thread_;  // after error_: started once it exists
  };

  // Construction, in this order (build()); a restore (build_restored()) loads instead of booting.
  void build();
  void build_restored();
  SnapshotState read_snapshot_state() const;
  void check_restored_shape(const SnapshotState& st);
  std::vector<std::unique_ptr<DiskView>> open_restored_disks(const SnapshotState& st);
  void load_virtio_devices(const SnapshotState& st);
  void map_memory();
  void check_config() const;
  void create_vm();
  void create_memory();
  void load_kernel_image(const ReadOnlyMapping& kernel_image);
  void load_initrd();
  void attach_port_devices();
  void attach_block_devices();
  void attach_block_devices(std::vector<std::unique_ptr<DiskView>> views);
  void attach_net_device();
  void attach_fs_devices();
  void attach_vsock_device();
  std::vector<int> vhost_user_fds() const;
  // `queue_kicks`: one eventfd per queue, signalled by QueueNotify writes of the queue's index
  // (instead of the one notify eventfd for all queues).
  MmioDevice attach_mmio_device(std::string name, VirtioDevice& dev,
                                std::span<const int> queue_kicks = {});
  void create_event_fds();
  void write_boot_tables();
  void create_vcpus(const SnapshotState* restore = nullptr);
  void save_snapshot(const std::filesystem::path& dir);
  void check_snapshot_devices() const;
  void save_virtio_devices(SnapshotWriter& w) const;
  // The vsock device's MMIO slot: after the disks, the NIC and the virtio-fs devices.
  uint32_t vsock_slot() const {
    return uint32_t(disks.size() + (nic ? 1 : 0) + shared_dirs.size());
  }
  void save_disks(const std::filesystem::path& dir) const;
};

void Machine::Impl::build() {
  check_config();
  if (!cfg.restore_from.empty()) return build_restored();
  // Mapped, not read: the segments are copied once, straight from the page cache into guest
  // RAM, with no staging buffer (a 21 MB vmlinux would otherwise cost as much again in RSS).
  // Opened before /dev/kvm, so that a missing kernel is reported as such on any host.
  ReadOnlyMapping kernel_image(cfg.kernel);
  VmCreation making(*this);  // while guest RAM is made and the kernel copied in
  create_memory();
  load_kernel_image(kernel_image);
  kernel_image.reset();
  load_initrd();
  making.wait();
  map_memory();
  // The guest-visible machine: legacy ports, then the virtio-mmio devices in slot order (disks,
  // then the NIC, then the virtio-fs devices), each announced on the command line after the
  // caller's arguments.
  attach_port_devices();
  attach_block_devices();
  if (cfg.net) attach_net_device();
  attach_fs_devices();
  if (cfg.vsock) attach_vsock_device();
  cmdline = mmio_devices.command_line(cfg.cmdline);
  create_event_fds();
  write_boot_tables();
  create_vcpus();
}

void Machine::Impl::check_config() const {
  if (cfg.kernel.empty() && cfg.restore_from.empty())
    throw Error(ErrorKind::kInvalidArgument, "no kernel given");
  uint64_t mem_bytes = cfg.memory_mib << 20;
  if (cfg.memory_mib == 0 || mem_bytes < layout::kMinMemory || mem_bytes > layout::kMaxMemory)
    throw Error(ErrorKind::kInvalidArgument,
                "memory must be between " + std::to_string(layout::kMinMemory >> 20) + " and " +
                    std::to_string(layout::kMaxMemory >> 20) + " MiB");
  if (cfg.vcpus == 0 || cfg.vcpus > layout::kMaxVcpus)
    throw Error(ErrorKind::kInvalidArgument,
                "vCPU count must be between 1 and " + std::to_string(layout::kMaxVcpus));
  if (cfg.disks.size() > kMaxDisks)
    throw Error(ErrorKind::kLimit, "at most " + std::to_string(kMaxDisks) + " disks");
  for (size_t i = 0; i < cfg.fs.size(); ++i)
    for (size_t k = 0; k < i; ++k)
      if (cfg.fs[i].tag == cfg.fs[k].tag)
        throw Error(ErrorKind::kInvalidArgument,
                    "two shared directories have the tag '" + cfg.fs[i].tag + "'");
}

// /dev/kvm, the VM with its in-kernel irqchip and PIT.
void Machine::Impl::create_vm() {
  int kfd = ::open(cfg.kvm_device.c_str(), O_RDWR | O_CLOEXEC);
  if (kfd < 0) throw_errno("cannot open " + cfg.kvm_device.string());
  kvm.reset(kfd);
  if (::ioctl(kvm.get(), KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
    throw Error(ErrorKind::kUnsupported, cfg.kvm_device.string() + " does not speak the KVM API");
  for (auto [cap, name] : {std::pair{KVM_CAP_IRQCHIP, "IRQCHIP"},
                           {KVM_CAP_USER_MEMORY, "USER_MEMORY"},
                           {KVM_CAP_IOEVENTFD, "IOEVENTFD"},
                           {KVM_CAP_IRQFD, "IRQFD"},
                           {KVM_CAP_PIT2, "PIT2"},
                           {KVM_CAP_IMMEDIATE_EXIT, "IMMEDIATE_EXIT"},
                           {KVM_CAP_EXT_CPUID, "EXT_CPUID"}}) {
    if (::ioctl(kvm.get(), KVM_CHECK_EXTENSION, cap) <= 0)
      throw Error(ErrorKind::kUnsupported, std::string("KVM lacks KVM_CAP_") + name);
  }
  tsc_deadline = ::ioctl(kvm.get(), KVM_CHECK_EXTENSION, KVM_CAP_TSC_DEADLINE_TIMER) > 0;
  vm.reset(xioctl(kvm.get(), KVM_CREATE_VM, 0ul, "KVM_CREATE_VM"));
  xioctl(vm.get(), KVM_SET_TSS_ADDR, static_cast<unsigned long>(layout::kTssAddr),
         "KVM_SET_TSS_ADDR");
  xioctl(vm.get(), KVM_CREATE_IRQCHIP, 0ul, "KVM_CREATE_IRQCHIP");
  kvm_pit_config pit{};
  pit.flags = KVM_PIT_SPEAKER_DUMMY;
  xioctl(vm.get(), KVM_CREATE_PIT2, &pit, "KVM_CREATE_PIT2");
}

// Guest RAM, made before the VM exists; map_memory() gives it to the VM as slot 0 from address 0.
void Machine::Impl::create_memory() {
  // A vhost-user backend maps guest RAM itself: it must then be a shared memfd.
  mem = std::make_unique<GuestMemory>(
      cfg.memory_mib << 20,
      cfg.hugepages ? GuestMemory::Pages::kHuge2M : GuestMemory::Pages::kNormal,
      cfg.fs.empty() ? GuestMemory::Sharing::kPrivate : GuestMemory::Sharing::kShared);
}

void Machine::Impl::map_memory() {
  kvm_userspace_memory_region region{};
  region.slot = 0;
  region.guest_phys_addr = 0;
  region.memory_size = mem->size();
  region.userspace_addr = reinterpret_cast<uint64_t>(mem->host_base());
  xioctl(vm.get(), KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");
}

void Machine::Impl::load_kernel_image(const ReadOnlyMapping& kernel_image) {
  try {
    kernel = load_kernel(kernel_image.bytes(), *mem);
  } catch (const Error& e) {
    throw e.with_context(cfg.kernel.string());
  }
}

// Above the kernel, as high as it may go.
void Machine::Impl::load_initrd() {
  if (cfg.initrd.empty()) return;
  UniqueFd f = open_file(cfg.initrd, O_RDONLY);
  struct stat st {};
  if (::fstat(f.get(), &st) != 0) throw_errno("cannot stat " + cfg.initrd.string());
  initrd_size = uint64_t(st.st_size);
  try {
    initrd_addr = place_initrd(*mem, kernel, initrd_size);
  } catch (const Error& e) {
    throw e.with_context(cfg.initrd.string());
  }
  uint8_t* dst = mem->ptr(initrd_addr, initrd_size);
  for (uint64_t done = 0; done < initrd_size;) {
    ssize_t n = ::pread(f.get(), dst + done, initrd_size - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("cannot read " + cfg.initrd.string());
    if (n == 0) throw Error(ErrorKind::kIo, cfg.initrd.string() + ": file shrank while reading");
    done += uint64_t(n);
  }
}

// The I/O ports: COM1 (the console), COM2 (the workload's stderr), the i8042's reset line and
// the guest init's ports (guest_ports.hpp).
void Machine::Impl::attach_port_devices() {
  auto add_uart = [this](Uart8250& u, uint16_t base, const char* name) {
    port_bus.add(base, 8, name,
                 [this, &u](uint64_t offset, bool write, uint8_t* data, unsigned size) {
                   if (size != 1) return port_bus.unclaimed(write, data, size);
                   if (write)
                     u.write(uint16_t(offset), data[0]);
                   else
                     data[0] = u.read(uint16_t(offset));
                 });
  };
  uart =
      std::make_unique<Uart8250>([this](uint8_t c) { write_byte(cfg.console_out_fd, c); },
                                 [this](bool level) { set_irq_line(guestabi::kUartIrq, level); });
  add_uart(*uart, guestabi::kUartBase, "COM1");
  stderr_uart = std::make_unique<Uart8250>(
      [this](uint8_t c) { write_byte(cfg.console_err_fd, c); },
      [this](bool level) { set_irq_line(guestabi::kStderrUartIrq, level); });
  add_uart(*stderr_uart, guestabi::kStderrUartBase, "COM2");
  for (uint16_t port : {guestabi::kI8042Data, guestabi::kI8042Command}) {
    port_bus.add(port, 1, "i8042",
                 [this, port](uint64_t, bool write, uint8_t* data, unsigned size) {
                   if (size != 1) return port_bus.unclaimed(write, data, size);
                   std::lock_guard lk(i8042_mu);
                   if (!write) {
                     data[0] = i8042.read(port);
                   } else if (i8042.write(port, data[0])) {
                     finish(ExitReason::kReboot, 0, kResetWithoutStatus);
                   }
                 });
  }
  guest_ports.attach(port_bus);
}

void Machine::Impl::attach_block_devices() {
  std::vector<std::unique_ptr<DiskView>> views;
  for (size_t i = 0; i < cfg.disks.size(); ++i) {
    try {
      views.push_back(open_disk_view(cfg.disks[i].path, cfg.disks[i].mode));
    } catch (const Error& e) {
      throw e.with_context("disk " + std::to_string(i));
    }
  }
  attach_block_devices(std::move(views));
}

// The disks' devices in MMIO slots 0, 1, ... (their order in cfg.disks), over `views`.
void Machine::Impl::attach_block_devices(std::vector<std::unique_ptr<DiskView>> views) {
  for (size_t i = 0; i < views.size(); ++i) {
    const auto& dc = cfg.disks[i];
    auto d = std::make_unique<Disk>();
    d->blk = std::make_unique<VirtioBlk>(std::move(views[i]),
                                         dc.id.empty() ? "img2vm" + std::to_string(i) : dc.id);
    d->mmio = attach_mmio_device("virtio-blk " + std::to_string(i), *d->blk);
    disks.push_back(std::move(d));
  }
}

void Machine::Impl::attach_net_device() {
  auto n = std::make_unique<Nic>();
  if (cfg.net->backend) {
    n->backend = cfg.net->backend;
  } else if (cfg.net->tap) {
    UniqueFd dup(::fcntl(cfg.net->tap->fd, F_DUPFD_CLOEXEC, 3));
    if (!dup) throw_errno("the network's tap device (fd " + std::to_string(cfg.net->tap->fd) + ")");
    n->backend = std::make_shared<TapDevice>(std::move(dup), cfg.net->tap->published);
  } else {
    n->backend = std::make_shared<SlirpBackend>(cfg.net->user, cfg.net->mtu);
  }
  n->dev = std::make_unique<VirtioNet>(*n->backend, cfg.net->mac, cfg.net->mtu);
  n->mmio = attach_mmio_device("virtio-net", *n->dev);
  VirtioMmio* transport = n->mmio.transport.get();
  n->dev->set_kick([transport] { transport->notify(); });
  nic = std::move(n);
}

void Machine::Impl::attach_fs_devices() {
  for (size_t i = 0; i < cfg.fs.size(); ++i) {
    const auto& fc = cfg.fs[i];
    auto d = std::make_unique<SharedDir>();
    std::string name = "the virtio-fs backend for '" + fc.tag + "'";
    try {
      if (fc.socket_fd >= 0) {
        UniqueFd dup(::fcntl(fc.socket_fd, F_DUPFD_CLOEXEC, 3));
        if (!dup) throw_errno(name + " (fd " + std::to_string(fc.socket_fd) + ")");
        d->dev = std::make_unique<VirtioFs>(VhostUserFrontend(std::move(dup), name), fc.tag);
      } else {
        d->dev = std::make_unique<VirtioFs>(
            VhostUserFrontend::connect(fc.socket_path.string(), name), fc.tag);
      }
    } catch (const Error& e) {
      throw e.with_context("shared directory " + std::to_string(i));
    }
    std::vector<int> kicks;
    for (unsigned q = 0; q < d->dev->num_queues(); ++q) kicks.push_back(d->dev->kick_fd(q));
    d->mmio = attach_mmio_device("virtio-fs " + fc.tag, *d->dev, kicks);
    d->dev->set_call_fd(d->mmio.irq.get());
    shared_dirs.push_back(std::move(d));
  }
}

void Machine::Impl::attach_vsock_device() {
  auto v = std::make_unique<Vsock>();
  try {
    v->dev = std::make_unique<VirtioVsock>(cfg.vsock->guest_cid, cfg.vsock->uds_path);
  } catch (const Error& e) {
    throw e.with_context("vsock device");
  }
  v->mmio = attach_mmio_device("virtio-vsock", *v->dev);
  VirtioMmio* transport = v->mmio.transport.get();
  v->dev->set_kick([transport] { transport->notify(); });
  vsock = std::move(v);
}

std::vector<int> Machine::Impl::vhost_user_fds() const {
  std::vector<int> fds;
  for (const auto& d : shared_dirs) fds.push_back(d->dev->backend().fd());
  return fds;
}

// Every virtio device goes into the guest this way: its transport in the next MMIO slot (bus,
// command line), its queue notifications on an ioeventfd and its interrupt on an irqfd.
MmioDevice Machine::Impl::attach_mmio_device(std::string name, VirtioDevice& dev,
                                             std::span<const int> queue_kicks) {
  MmioDevice d;
  d.notify.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  d.irq.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!d.notify || !d.irq) throw_errno("eventfd");
  const int irq_fd = d.irq.get();
  d.transport = std::make_unique<VirtioMmio>(*mem, dev, [irq_fd] {
    uint64_t one = 1;
    (void)!::write(irq_fd, &one, sizeof one);
  });
  d.slot = mmio_devices.attach(std::move(name), *d.transport);
  kvm_ioeventfd ioev{};
  ioev.addr = d.slot.base + VirtioMmio::kNotifyOffset;
  ioev.len = 4;
  ioev.fd = d.notify.get();
  if (queue_kicks.empty()) xioctl(vm.get(), KVM_IOEVENTFD, &ioev, "KVM_IOEVENTFD");
  for (size_t q = 0; q < queue_kicks.size(); ++q) {
    ioev.fd = queue_kicks[q];
    ioev.flags = KVM_IOEVENTFD_FLAG_DATAMATCH;
    ioev.datamatch = q;
    xioctl(vm.get(), KVM_IOEVENTFD, &ioev, "KVM_IOEVENTFD");
  }
  kvm_irqfd irqfd{};
  irqfd.fd = uint32_t(d.irq.get());
  irqfd.gsi = d.slot.irq;
  xioctl(vm.get(), KVM_IRQFD, &irqfd, "KVM_IRQFD");
  return d;
}

void Machine::Impl::create_event_fds() {
  stop_fd.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_fd) throw_errno("eventfd");
  exec_fd.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!exec_fd) throw_errno("eventfd");
}

void Machine::Impl::write_boot_tables() {
  const bool pvh = kernel.format == KernelFormat::kElfPvh;
  write_mp_table(*mem, cfg.vcpus);
  write_gdt(*mem, !pvh);
  if (pvh) {
    write_pvh_start_info(*mem, cmdline, initrd_addr, initrd_size);
  } else {
    write_page_tables(*mem);
    write_boot_params(*mem, kernel, cmdline, initrd_addr, initrd_size);
  }
}

void Machine::Impl::create_vcpus(const SnapshotState* restore) {
  const bool pvh = kernel.format == KernelFormat::kElfPvh;
  int run_size = xioctl(kvm.get(), KVM_GET_VCPU_MMAP_SIZE, 0ul, "KVM_GET_VCPU_MMAP_SIZE");
  if (run_size < int(sizeof(kvm_run)))
    throw Error(ErrorKind::kUnsupported, "KVM: run area too small");
  CpuidTable cpuid = supported_cpuid(kvm.get());
  for (unsigned id = 0; id < cfg.vcpus; ++id) {
    auto v = std::make_unique<Vcpu>();
    v->id = id;
    v->fd.reset(
        xioctl(vm.get(), KVM_CREATE_VCPU, static_cast<unsigned long>(id), "KVM_CREATE_VCPU"));
    void* p = ::mmap(nullptr, size_t(run_size), PROT_READ | PROT_WRITE, MAP_SHARED, v->fd.get(), 0);
    if (p == MAP_FAILED) throw_errno("KVM: cannot map the vCPU run area");
    v->run = static_cast<kvm_run*>(p);
    v->run_size = size_t(run_size);
    v->cpuid = setup_cpuid(v->fd.get(), cpuid, id, cfg.vcpus, tsc_deadline);
    if (restore) {
      restore_vcpu(v->fd.get(), id, v->cpuid, *restore);
    } else {
      setup_msrs(v->fd.get());
      setup_fpu(v->fd.get());
      setup_lapic(v->fd.get());
      if (id == 0) setup_boot_regs(v->fd.get(), kernel.entry, pvh);
    }
    vcpus.push_back(std::move(v));
  }
}

// The machine a snapshot recorded, resumed: its memory mapped from the snapshot's file, the
// in-kernel devices and vCPUs set from its state, the VMM's devices and the virtio devices
// (in the same MMIO slots as at the cold boot) loaded. Nothing is booted.
void Machine::Impl::build_restored() {
  VmCreation making(*this);  // while the state is read and checked and the disks opened
  const SnapshotState st = read_snapshot_state();
  check_restored_shape(st);
  auto views = open_restored_disks(st);
  making.wait();
  mem = std::make_unique<GuestMemory>(
      GuestMemory::from_file(cfg.memory_mib << 20, cfg.restore_from / "memory"));
  map_memory();
  restore_vm(vm.get(), st);
  attach_port_devices();
  uart->load(st.get_struct<Uart8250::State>(Section::kUart, 0));
  stderr_uart->load(st.get_struct<Uart8250::State>(Section::kUart, 1));
  i8042.load(st.get_struct<I8042::State>(Section::kI8042, 0));
  attach_block_devices(std::move(views));
  if (cfg.net) attach_net_device();      // a new backend: the guest's connections were none yet
  if (cfg.vsock) attach_vsock_device();  // a new socket: no connection was in the snapshot
  load_virtio_devices(st);
  create_event_fds();
  create_vcpus(&st);
  // After the vCPUs' local APICs are set: an interrupt raised now is not overwritten.
  for (auto& d : disks) d->mmio.transport->raise_pending();
  if (nic) {
    nic->mmio.transport->raise_pending();
    // The NIC was held while the snapshot was written: what the guest made available after
    // that is handled by the network thread once it runs.
    uint64_t one = 1;
    (void)!::write(nic->mmio.notify.get(), &one, sizeof one);
  }
  if (vsock) {  // held like the NIC while the snapshot was written
    vsock->mmio.transport->raise_pending();
    uint64_t one = 1;
    (void)!::write(vsock->mmio.notify.get(), &one, sizeof one);
  }
}

SnapshotState Machine::Impl::read_snapshot_state() const {
  const auto state_path = cfg.restore_from / "state";
  try {
    return SnapshotState::parse(read_file(state_path, kMaxSnapshotState + 1));
  } catch (const Error& e) {
    throw e.with_context(state_path.string());
  }
}

// Memory, vCPUs and devices as the configuration has them; the kernel format from the state.
void Machine::Impl::check_restored_shape(const SnapshotState& st) {
  auto shape = st.get_struct<SnapshotMachine>(Section::kMachine, 0);
  if (shape.nics != (cfg.net ? 1u : 0u))
    throw Error(ErrorKind::kInvalidArgument, "the snapshot in " + cfg.restore_from.string() +
                                                 " is of a machine with " +
                                                 (shape.nics ? "a NIC" : "no NIC") +
                                                 ", this one has " + (cfg.net ? "one" : "none"));
  if (shape.shared_dirs || !cfg.fs.empty())
    throw Error(ErrorKind::kUnsupported,
                "snapshots of machines with virtio-fs are not supported yet");
  if (shape.vsock != (cfg.vsock ? 1u : 0u))
    throw Error(ErrorKind::kInvalidArgument,
                "the snapshot in " + cfg.restore_from.string() + " is of a machine with " +
                    (shape.vsock ? "a vsock device" : "no vsock device") + ", this one has " +
                    (cfg.vsock ? "one" : "none"));
  if (shape.memory_bytes != cfg.memory_mib << 20 || shape.vcpus != cfg.vcpus)
    throw Error(ErrorKind::kInvalidArgument,
                "the snapshot in " + cfg.restore_from.string() + " is of a machine with " +
                    std::to_string(shape.memory_bytes >> 20) + " MiB and " +
                    std::to_string(shape.vcpus) + " vCPUs, not " + std::to_string(cfg.memory_mib) +
                    " MiB and " + std::to_string(cfg.vcpus));
  if (shape.disks != cfg.disks.size())
    throw Error(ErrorKind::kInvalidArgument, "the snapshot in " + cfg.restore_from.string() +
                                                 " is of a machine with " +
                                                 std::to_string(shape.disks) + " disks, not " +
                                                 std::to_string(cfg.disks.size()));
  if (shape.kernel_format > uint32_t(KernelFormat::kBzImage))
    throw Error(ErrorKind::kIntegrity, "snapshot state file: unknown kernel format");
  kernel.format = KernelFormat(shape.kernel_format);
}

namespace {
// The size of a disk file or block device, as a view of it would have.
uint64_t disk_size(const std::filesystem::path& p) {
  UniqueFd fd = open_file(p, O_RDONLY);
  off_t end = ::lseek(fd.get(), 0, SEEK_END);
  if (end < 0) throw_errno("cannot size disk " + p.string());
  return uint64_t(end);
}
}  // namespace

// Each configured disk against the snapshot's (mode, size), then its view: a copy-on-write
// disk starts from its image plus the writes saved in disk-N, a read-only one is as given.
std::vector<std::unique_ptr<DiskView>> Machine::Impl::open_restored_disks(const SnapshotState& st) {
  std::vector<std::unique_ptr<DiskView>> views;
  for (uint32_t i = 0; i < cfg.disks.size(); ++i) {
    const auto& dc = cfg.disks[i];
    const std::string name = "disk " + std::to_string(i) + " (" + dc.path.string() + ")";
    const auto saved = st.get_struct<SnapshotDisk>(Section::kDisk, i);
    if (saved.mode > uint32_t(DiskMode::kCopyOnWrite) ||
        saved.mode == uint32_t(DiskMode::kReadWrite) ||
        saved.saved_writes != uint32_t(saved.mode == uint32_t(DiskMode::kCopyOnWrite)))
      throw Error(ErrorKind::kIntegrity, "snapshot state file: " + describe(Section::kDisk, i) +
                                             " has an impossible mode");
    if (DiskMode(saved.mode) != dc.mode)
      throw Error(ErrorKind::kInvalidArgument, name + " is " + std::string(to_string(dc.mode)) +
                                                   ", the snapshot's was " +
                                                   std::string(to_string(DiskMode(saved.mode))));
    try {
      if (uint64_t size = disk_size(dc.path); size != saved.size)
        throw Error(
            ErrorKind::kInvalidArgument,
            std::to_string(size) + " bytes, the snapshot's disk had " + std::to_string(saved.size));
      views.push_back(dc.mode == DiskMode::kCopyOnWrite
                          ? open_disk_view_with_writes(
                                dc.path, cfg.restore_from / ("disk-" + std::to_string(i)))
                          : open_disk_view(dc.path, dc.mode));
    } catch (const Error& e) {
      throw e.with_context(name);
    }
  }
  return views;
}

// Each virtio device's transport and own state, into the devices just attached in the same
// slots.
void Machine::Impl::load_virtio_devices(const SnapshotState& st) {
  for (uint32_t i = 0; i < disks.size(); ++i) {
    try {
      disks[i]->mmio.transport->load(st.get(Section::kVirtioMmio, i));
      disks[i]->blk->load_state(st.get(Section::kVirtioDevice, i));
    } catch (const Error& e) {
      throw e.with_context("virtio-blk " + std::to_string(i));
    }
  }
  if (nic) {
    try {
      nic->mmio.transport->load(st.get(Section::kVirtioMmio, uint32_t(disks.size())));
      nic->dev->load_state(st.get(Section::kVirtioDevice, uint32_t(disks.size())));
    } catch (const Error& e) {
      throw e.with_context("virtio-net");
    }
  }
  if (vsock) {
    const uint32_t slot = vsock_slot();
    try {
      vsock->mmio.transport->load(st.get(Section::kVirtioMmio, slot));
      vsock->dev->load_state(st.get(Section::kVirtioDevice, slot));
    } catch (const Error& e) {
      throw e.with_context("virtio-vsock");
    }
  }
}

void Machine::Impl::save_snapshot(const std::filesystem::path& dir) {
  {
    std::lock_guard lk(mu);
    if (!started || result || !pause_requested || !all_parked())
      throw Error(ErrorKind::kInvalidArgument, "a snapshot needs a paused machine");
  }
  check_snapshot_devices();
  // The vCPUs are parked: the guest makes no chain available any more. But a notification it
  // wrote before parking may still be on its way through the ioeventfd to the I/O thread, or
  // be handled there right now. finish_pending() takes each transport's lock (after any
  // handling in progress) and handles every available chain. From then on nothing changes
  // guest memory, the queues' indices or the disks: a late notification the I/O thread reads
  // finds nothing to do (and a restored VM, whose ioeventfds are new, needs none). So memory,
  // the disks' writes and the state below are all of that one moment. An interrupt raised
  // here may reach the irqchip after it is saved: the restore raises it again (raise_pending).
  for (auto& d : disks) d->mmio.transport->finish_pending();
  // The NIC's network thread delivers frames whenever they arrive: held, it leaves guest memory
  // and the queues alone until the snapshot is written (chains the guest made available stay
  // in the rings, for the network thread here after release and for a restored VM at its start).
  // The vsock device's thread likewise, for connections a host client starts meanwhile.
  struct Hold {
    MmioDevice* d;
    explicit Hold(MmioDevice* m) : d(m) {
      if (d) d->transport->hold();
    }
    ~Hold() {
      if (!d) return;
      d->transport->release();
      uint64_t one = 1;
      (void)!::write(d->notify.get(), &one, sizeof one);
    }
  } nic_hold(nic ? &nic->mmio : nullptr), vsock_hold(vsock ? &vsock->mmio : nullptr);
  SnapshotWriter w;
  SnapshotMachine shape;
  shape.memory_bytes = mem->size();
  shape.vcpus = unsigned(vcpus.size());
  shape.kernel_format = uint32_t(kernel.format);
  shape.disks = uint32_t(disks.size());
  shape.nics = nic ? 1 : 0;
  shape.vsock = vsock ? 1 : 0;
  w.add_struct(Section::kMachine, 0, shape);
  const auto msrs = saveable_msrs(kvm.get());
  for (const auto& v : vcpus) save_vcpu(v->fd.get(), v->id, msrs, v->cpuid, w);
  save_vm(vm.get(), w);
  w.add_struct(Section::kUart, 0, uart->save());
  w.add_struct(Section::kUart, 1, stderr_uart->save());
  {
    std::lock_guard lk(i8042_mu);
    w.add_struct(Section::kI8042, 0, i8042.save());
  }
  save_virtio_devices(w);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Error(ErrorKind::kIo, "cannot create " + dir.string() + ": " + ec.message());
  // The state last: a directory with a state file holds a whole snapshot.
  AtomicFile memory(dir / "memory", 0600);
  mem->save_to(memory.fd(), memory.temp_path().string());
  memory.commit();
  save_disks(dir);
  write_file_atomic(dir / "state", w.serialize(), 0600);
}

// What a snapshot cannot hold yet, refused before anything is written.
void Machine::Impl::check_snapshot_devices() const {
  if (!shared_dirs.empty())
    throw Error(ErrorKind::kUnsupported,
                "snapshots of machines with virtio-fs are not supported yet");
  for (size_t i = 0; i < disks.size(); ++i) {
    const std::string name = "disk " + std::to_string(i) + " (" + cfg.disks[i].path.string() + ")";
    if (!disks[i]->blk->snapshot_supported())
      throw Error(ErrorKind::kUnsupported, name + " cannot be saved in a snapshot");
    if (cfg.disks[i].mode == DiskMode::kReadWrite)
      throw Error(ErrorKind::kUnsupported,
                  name +
                      " is read-write: a snapshot needs it copy-on-write or read-only (the "
                      "guest's page cache of it would not survive changes made to the file "
                      "after the snapshot)");
  }
}

void Machine::Impl::save_virtio_devices(SnapshotWriter& w) const {
  for (uint32_t i = 0; i < disks.size(); ++i) {
    const Disk& d = *disks[i];
    w.add(Section::kVirtioMmio, i, d.mmio.transport->save());
    w.add(Section::kVirtioDevice, i, d.blk->save_state());
    SnapshotDisk sd;
    sd.size = d.blk->view().size();
    sd.mode = uint32_t(cfg.disks[i].mode);
    sd.saved_writes = cfg.disks[i].mode == DiskMode::kCopyOnWrite;
    w.add_struct(Section::kDisk, i, sd);
  }
  if (nic) {  // in the MMIO slot after the disks
    w.add(Section::kVirtioMmio, uint32_t(disks.size()), nic->mmio.transport->save());
    w.add(Section::kVirtioDevice, uint32_t(disks.size()), nic->dev->save_state());
  }
  if (vsock) {  // then the vsock device (a snapshot has no virtio-fs devices before it)
    w.add(Section::kVirtioDevice, vsock_slot(), vsock->dev->save_state());  // refuses connections
    w.add(Section::kVirtioMmio, vsock_slot(), vsock->mmio.transport->save());
  }
}

// A copy-on-write disk's writes so far go to disk-N; a read-only disk has none.
void Machine::Impl::save_disks(const std::filesystem::path& dir) const {
  for (size_t i = 0; i < disks.size(); ++i)
    if (cfg.disks[i].mode == DiskMode::kCopyOnWrite)
      disks[i]->blk->view().save_writes(dir / ("disk-" + std::to_string(i)));
}

Machine::Machine(MachineConfig config) : impl_(std::make_unique<Impl>()) {
  impl_->cfg = std::move(config);
  try {
    impl_->build();
  } catch (...) {
    // A machine that was not made leaves no vsock socket behind: its caller may build another
    // on the same path at once (a cold boot after a refused snapshot). This thread has no
    // seccomp filter of the machine's yet.
    if (impl_->vsock) {
      impl_->vsock.reset();
      ::unlink(impl_->cfg.vsock->uds_path.c_str());
    }
    throw;
  }
}

Machine::~Machine() {
  if (impl_->started) {
    impl_->finish(ExitReason::kStopped, 0, "the machine was destroyed");
    impl_->join_all();
  }
}

const std::string& Machine::cmdline() const noexcept { return impl_->cmdline; }

std::string Machine::kernel_format() const { return to_string(impl_->kernel.format); }

std::vector<std::string> Machine::disk_views() const {
  std::vector<std::string> out;
  for (const auto& d : impl_->disks) out.emplace_back(d->blk->view().kind());
  return out;
}

std::vector<PortForward> Machine::published_ports() const {
  return impl_->nic ? impl_->nic->backend->published() : std::vector<PortForward>{};
}

void Machine::start() {
  Impl& m = *impl_;
  if (m.started) throw Error(ErrorKind::kInvalidArgument, "machine already started");
  install_kick_handler();
  m.started = true;
  m.mark(m.timings.setup_done);
  try {
    m.io_thread = std::thread([&m] { m.io_loop(); });
    if (m.nic) m.net_thread = std::thread([&m] { m.net_loop(); });
    if (m.vsock) m.vsock_thread = std::thread([&m] { m.vsock_loop(); });
    for (auto& v : m.vcpus) {
      Vcpu* vp = v.get();
      v->thread = std::thread([&m, vp] { m.vcpu_loop(*vp); });
      v->started = true;
    }
  } catch (const std::system_error& e) {
    m.finish(ExitReason::kKvmError, 0, std::string("cannot start a thread: ") + e.what());
  }
}

std::optional<MachineResult> Machine::wait_for(std::chrono::milliseconds d) {
  Impl& m = *impl_;
  if (!m.started) throw Error(ErrorKind::kInvalidArgument, "machine not started");
  auto deadline = Clock::now() + d;
  if (m.cfg.timeout.count() > 0) {
    auto tdeadline =
        m.t0 + std::chrono::duration_cast<Clock::duration>(*m.timings.setup_done) + m.cfg.timeout;
    bool timeout_first = tdeadline <= deadline;
    if (timeout_first) deadline = tdeadline;
    std::unique_lock lk(m.mu);
    if (!m.cv.wait_until(lk, deadline, [&] { return m.result.has_value(); })) {
      lk.unlock();
      if (!timeout_first) return std::nullopt;
      m.finish(ExitReason::kTimeout, 0,
               "timed out after " + std::to_string(m.cfg.timeout.count()) + " ms");
    }
  } else {
    std::unique_lock lk(m.mu);
    if (!m.cv.wait_until(lk, deadline, [&] { return m.result.has_value(); })) return std::nullopt;
  }
  m.join_all();
  std::lock_guard lk(m.mu);
  MachineResult r = *m.result;
  r.timings = m.timings;
  return r;
}

MachineResult Machine::wait() {
  for (;;) {
    if (auto r = wait_for(std::chrono::hours(24))) return *r;
  }
}

void Machine::stop() { impl_->finish(ExitReason::kStopped, 0, "stopped by the host"); }

void Machine::request_stop() { impl_->guest_ports.request_signal(guestabi::kStopRequest); }

void Machine::signal_workload(int sig) {
  if (sig < 1 || sig > 64)
    throw Error(ErrorKind::kInvalidArgument,
                "signal " + std::to_string(sig) + " out of range 1-64");
  impl_->guest_ports.request_signal(static_cast<uint8_t>(sig));
}

void Machine::set_window_size(uint16_t rows, uint16_t cols) {
  impl_->guest_ports.set_window_size(rows, cols);
}

MachineResult Machine::run() {
  start();
  return wait();
}

bool Machine::pause(std::chrono::milliseconds d) {
  Impl& m = *impl_;
  if (!m.started) throw Error(ErrorKind::kInvalidArgument, "machine not started");
  m.request_pause();
  return wait_for_pause(d);
}

bool Machine::wait_for_pause(std::chrono::milliseconds d) {
  Impl& m = *impl_;
  std::unique_lock lk(m.mu);
  m.cv.wait_for(lk, d,
                [&] { return m.result.has_value() || (m.pause_requested && m.all_parked()); });
  return !m.result && m.pause_requested && m.all_parked();
}

void Machine::resume() {
  Impl& m = *impl_;
  {
    std::lock_guard lk(m.mu);
    m.pause_requested = false;
  }
  m.cv.notify_all();
}

void Machine::save_snapshot(const std::filesystem::path& dir) { impl_->save_snapshot(dir); }

}  // namespace img2vm::vm
