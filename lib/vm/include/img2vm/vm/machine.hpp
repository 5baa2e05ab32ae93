// img2vm::vm::Machine: a microVM on the Linux KVM API that a program can embed. Configure it,
// start it, wait for it (or stop it); it reports how the guest ended and never exits or
// signals the calling process. One Machine owns its KVM VM, guest memory, vCPU threads, an I/O
// thread and its devices; destroying it stops and joins everything.
//
//   img2vm::vm::MachineConfig cfg;
//   cfg.kernel = "vmlinux"; cfg.cmdline = guestabi::image_cmdline(false); cfg.disks =
//   {{"root.ext4"}}; img2vm::vm::Machine m(cfg);          // opens /dev/kvm, loads the kernel;
//   throws img2vm::Error m.start(); auto r = m.wait();                   // or wait_for(), stop()
//   return r.host_exit_code();           // the workload's status, or 122-125 (docs/vm.md)
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "img2vm/vm/disk_view.hpp"
#include "img2vm/vm/net_slirp.hpp"
#include "img2vm/vm/seccomp.hpp"

namespace img2vm::vm {

// When the console's input starts reaching the guest: at once, or once the workload runs.
enum class ConsoleInput { kImmediately, kAtWorkloadExec };

// A virtio-blk disk: its file and how the guest's writes are kept.
struct DiskConfig {
  std::filesystem::path path;
  // kCopyOnWrite: the guest sees a writable disk, `path` is never modified (disk_view.hpp).
  DiskMode mode = DiskMode::kReadWrite;
  std::string id;  // VIRTIO_BLK_T_GET_ID (up to 20 bytes); default "img2vm<N>"
};

// A tap device someone else has opened and set up (TapBackend::device_fd(): `img2vm run
// --network tap` hands it to img2vm-vmm this way). The NIC carries frames on it and needs no
// privilege for that (TapDevice, net_tap.hpp). The Machine uses a duplicate of `fd`.
struct TapFdConfig {
  int fd = -1;
  std::vector<PortForward> published;  // what the host side publishes (Machine::published_ports())
};

// The host side of a virtio-net NIC (virtio_net.hpp); what the guest configures on it (address,
// route) is guestabi::NetConfig, the init's business. The backend is `backend` when given (a
// TapBackend made by the caller, who needs its addresses for the guest's command line:
// net_tap.hpp), else the tap device `tap` when given, else user-mode networking with `user`
// (net_slirp.hpp): the guest is 10.0.2.15/24 behind gateway 10.0.2.2 with DNS at 10.0.2.3.
struct NicConfig {
  std::array<uint8_t, 6> mac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
  uint16_t mtu = 1500;  // the guest driver adopts it (VIRTIO_NET_F_MTU); 68-65520
  UserNetConfig user;
  std::optional<TapFdConfig> tap;
  std::shared_ptr<NetBackend> backend;  // used by one Machine at a time
};

// A host directory shared with the guest through virtio-fs (docs/vm.md): a vhost-user backend
// (virtiofsd) already listening on `socket_path`, or already connected on `socket_fd` (not
// owned; the Machine uses a duplicate), serves it; the guest mounts it by `tag`
// (`mount -t virtiofs TAG DIR`). Guest RAM becomes a shared memfd when any is configured.
struct FsConfig {
  std::string tag;  // 1-36 bytes
  std::filesystem::path socket_path;
  int socket_fd = -1;  // used instead of socket_path when >= 0
};

// A virtio-vsock device (docs/vm.md) whose host side is unix sockets: the host reaches guest
// port P through `uds_path` with a `CONNECT P` line, and the guest's connections to the host's
// port P arrive on `<uds_path>_P`. The Machine creates `uds_path` (it must not exist); the
// caller removes it after the Machine is gone (the VMM's threads may not unlink files). An
// empty `uds_path`: the device without a host side (nothing listens, the guest's connections
// are refused), for a snapshot's machine resumed without an exec agent.
struct VsockConfig {
  uint64_t guest_cid = 3;  // 3 to 2^32-2 (0, 1, 2 and 2^32-1 are reserved)
  std::filesystem::path uds_path;
};

// Everything a Machine is built from: memory, vCPUs, kernel, command line, disks, network.
struct MachineConfig {
  uint64_t memory_mib = 256;
  bool hugepages = false;  // back guest RAM with 2 MiB huge pages (GuestMemory::Pages)
  unsigned vcpus = 1;
  std::filesystem::path kernel;   // vmlinux ELF (PVH note preferred) or bzImage
  std::string cmdline;            // virtio_mmio.device=... entries for the disks are appended
  std::filesystem::path initrd;   // optional
  std::vector<DiskConfig> disks;  // /dev/vda, /dev/vdb, ... in this order
  std::optional<NicConfig>
      net;  // a NIC (eth0), the virtio-mmio device after the disks; none if empty
  // virtio-fs devices, the virtio-mmio devices after the disks and the NIC, in this order.
  std::vector<FsConfig> fs;
  // A vsock device, the virtio-mmio device after the virtio-fs ones; none if empty.
  std::optional<VsockConfig> vsock;
  int console_out_fd = 1;  // UART output; -1 discards it. Not owned.
  // The second UART's output (COM2, ttyS1: the workload's stderr when it has no tty); -1
  // discards it. Not owned.
  int console_err_fd = 2;
  // UART input; -1 for none. Not owned. When it ends (EOF or an error) the guest init is told
  // after how many bytes (SIGNAL 0x82, STDIN_BYTES: docs/guest-abi.md), so that it can close the
  // workload's stdin after exactly those.
  int console_in_fd = -1;
  // When console input starts to flow: at once, or once the guest init marks the workload's
  // exec (BOOT_MARK 2), so that input sent early (a pipe) is not lost to the kernel's
  // serial setup but read by the workload, as `docker run -i` gives it all.
  ConsoleInput console_input = ConsoleInput::kImmediately;
  // When >= 0, the guest init's progress is written to it, one byte each time, at the first of
  // each mark: 'C' when the workload's process exists and waits for its start (BOOT_MARK 3,
  // only with guestabi::RunOverrides::wait_for_start: OCI create), 'R' when it execs
  // (BOOT_MARK 2). How a detached run's monitor learns that the workload was created and has
  // started. Not owned.
  int ready_fd = -1;
  // Resume a snapshot instead of booting (docs/snapshots.md): a directory Machine::save_snapshot
  // wrote (its `memory`, `state` and `disk-N` files). `kernel`, `initrd` and `cmdline` are then
  // unused; memory_mib and vcpus must be the snapshot's. `disks` must list as many disks as the
  // snapshot's machine had, in the same order, each in the same mode and of the same size
  // (else kInvalidArgument naming the disk): a copy-on-write disk starts from its image plus
  // the guest's writes saved in the snapshot (private to this machine; neither file is
  // written), a read-only disk is attached as given, its content may differ (per-run input).
  // A NIC, virtio-fs or vsock is refused (kUnsupported). Guest memory is mapped from the file
  // privately, so VMs resumed from one snapshot share its pages until they write them. A
  // snapshot taken on a CPU with other features is refused (kUnsupported), a damaged one too
  // (kIntegrity), never run.
  std::filesystem::path restore_from;
  // When true, the guest's BOOT_MARK 4 (guestabi::kMarkSnapshotPoint) pauses the VM (every
  // vCPU) right after that write, for save_snapshot(); wait_for_pause() reports it.
  bool pause_at_snapshot_point = false;
  std::chrono::milliseconds timeout{0};  // 0: none; else the VM ends as kTimeout
  std::filesystem::path kvm_device = "/dev/kvm";
  // Seccomp filters on the vCPU, I/O and network threads (seccomp.hpp). kKill suits a process
  // of its own (img2vm run); an embedder that must outlive a compromised VMM thread picks kErrno.
  SeccompMode seccomp = SeccompMode::kKill;
};

// Why a machine stopped.
enum class ExitReason {
  kExited,       // the guest wrote its workload's status to the EXIT port
  kInitFailed,   // the guest init reported its own failure (INIT_FAIL port)
  kReboot,       // reset (i8042 or KVM system event) with no status: the guest kernel died
  kTripleFault,  // KVM_EXIT_SHUTDOWN: the guest CPU triple-faulted
  kKvmError,     // KVM could not run the guest (internal/emulation error, failed entry)
  kTimeout,      // MachineConfig::timeout expired
  kStopped,      // stop() was called
};
// A short name for messages ("exited", "timeout", ...).
const char* to_string(ExitReason r) noexcept;

// Times since the Machine was constructed (VMM start); empty when the event did not happen.
struct BootTimings {
  std::optional<std::chrono::microseconds> setup_done;        // start() called, VM configured
  std::optional<std::chrono::microseconds> first_entry;       // first KVM_RUN of vCPU 0
  std::optional<std::chrono::microseconds> init_started;      // BOOT_MARK 1
  std::optional<std::chrono::microseconds> workload_created;  // BOOT_MARK 3 (wait_for_start)
  std::optional<std::chrono::microseconds> workload_exec;     // BOOT_MARK 2
  std::optional<std::chrono::microseconds> ended;
};

// How a run ended, with its timings.
struct MachineResult {
  ExitReason reason = ExitReason::kStopped;
  int status = 0;      // kExited: the workload's status; kInitFailed: the init's code
  std::string detail;  // one line for humans
  BootTimings timings;

  // img2vm run's exit code: the workload status as is for kExited; 122 init failure,
  // 123 the guest died (reboot/panic, triple fault), 124 timeout, 125 VMM or KVM error,
  // 130 stopped (documented in docs/vm.md).
  int host_exit_code() const noexcept;
  // One line for humans about how the run ended.
  std::string describe() const;
};

// A KVM virtual machine built from a MachineConfig: vCPU threads, devices, network.
class Machine {
 public:
  // Validates `config`, opens KVM, creates the VM, loads kernel and initrd, opens the disks.
  // Throws img2vm::Error (naming the file or the KVM call) on any failure, leaving no vsock
  // socket behind (a snapshot refused late in a restore: the caller boots on the same path).
  explicit Machine(MachineConfig config);
  ~Machine();
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  // Starts the vCPU and I/O threads. Call once.
  void start();
  // Blocks until the VM has ended (including the configured timeout) and returns why.
  MachineResult wait();
  // As wait(), but gives up after `d` (the VM keeps running) and returns nullopt.
  std::optional<MachineResult> wait_for(std::chrono::milliseconds d);
  // Asks the VM to end (reason kStopped unless it had already ended). Thread-safe, returns at once.
  void stop();
  // Asks the guest init to send the image's StopSignal to the workload (what `docker stop`
  // does first); the VM ends when the workload exits. Thread- and async-signal-safe. The init
  // polls for it about every 100 ms (docs/guest-abi.md); a newer request replaces an unread one.
  void request_stop();
  // Asks the guest init to send signal `sig` (1-64) to the workload, like `docker kill -s`.
  void signal_workload(int sig);
  // The size of the terminal the workload's tty stands for (-t): the guest init applies it before
  // the workload starts and, when it changes later, within ~100 ms (the workload gets SIGWINCH
  // from its kernel). Thread-safe; 0 means unknown.
  void set_window_size(uint16_t rows, uint16_t cols);
  // start() + wait().
  MachineResult run();

  // Snapshots (docs/snapshots.md). Not from the VM's own threads.
  // Stops every vCPU outside the guest, its last exit completed; true once all are paused,
  // false when the VM ended first or `d` passed.
  bool pause(std::chrono::milliseconds d);
  // Waits up to `d` for the VM to be paused (by pause() or the snapshot point).
  bool wait_for_pause(std::chrono::milliseconds d);
  // Lets a paused VM run on.
  void resume();
  // Writes the paused VM to `dir` (created if missing): `memory` (guest RAM, a sparse file),
  // `disk-N` for each copy-on-write disk (the guest's writes so far, sparse) and then `state`
  // (vCPUs, interrupt controllers, clock, devices, virtio transports), each atomically; the
  // virtio-blk queues are drained first. Throws Error (kInvalidArgument when not paused;
  // kUnsupported for a read-write disk, a NIC, virtio-fs or vsock).
  void save_snapshot(const std::filesystem::path& dir);

  // The kernel command line the guest gets (with the virtio_mmio.device= entries).
  const std::string& cmdline() const noexcept;
  // How the kernel is entered: "vmlinux (PVH entry)", "vmlinux (64-bit boot protocol)" or
  // "bzImage (64-bit boot protocol)".
  std::string kernel_format() const;
  // How each disk's data is stored, in DiskConfig order: "read-write", "read-only", "reflink"
  // or "overlay" (DiskView::kind()).
  std::vector<std::string> disk_views() const;
  // The published ports as bound (a host port 0 replaced by the one chosen); empty without a NIC.
  std::vector<PortForward> published_ports() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace img2vm::vm
