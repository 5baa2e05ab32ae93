// A vm::MachineConfig for a converted image and docker-style run options: the guest's
// overrides (env, user, workdir, entrypoint/cmd, ...) on its kernel command line or on a
// read-only disk, the network, published ports, extra disks, memory and vCPUs.
//
//   img2vm::runtime::MachineOptions mo;
//   mo.kernel = img2vm::runtime::find_guest_kernel()->path;
//   mo.rootfs = root.path;
//   mo.overrides.cmd = std::vector<std::string>{"/bin/sh", "-c", "echo hi"};
//   mo.overrides.env = {"MODE=test"};
//   mo.memory_mib = 512;
//   img2vm::runtime::PreparedMachine pm = img2vm::runtime::build_machine(std::move(mo));
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "img2vm/base/fd.hpp"
#include "img2vm/guestabi/config.hpp"
#include "img2vm/runtime/mounts.hpp"
#include "img2vm/runtime/root_dir.hpp"
#include "img2vm/runtime/virtiofsd.hpp"
#include "img2vm/runtime/volumes.hpp"
#include "img2vm/vm/machine.hpp"
#include "img2vm/vm/net_netns.hpp"
#include "img2vm/vm/net_tap.hpp"
#include "img2vm/vm/port_forward.hpp"

namespace img2vm::runtime {

// The nameservers a guest on the tap network uses, from the host's resolv.conf text: its IPv4
// nameservers except loopback ones (which the guest cannot reach; systemd-resolved's 127.0.0.53),
// or, when none is left, Google's public resolvers, as docker does.
std::vector<std::string> tap_guest_dns(const std::string& resolv_conf);

// An image config's ExposedPorts keys ("80/tcp", "53/udp", "8080"), and --expose values
// ("80", "80/udp", "8000-8002/tcp"), as "PORT/PROTO" strings in order, without repeats.
// Throws naming the bad value.
std::vector<std::string> parse_exposed_ports(const std::vector<std::string>& specs,
                                             const std::string& what);

// How the overrides reach the init: inline on the command line when short, else on a raw block
// device. Inline is used while the parameter stays under this many bytes.
inline constexpr size_t kInlineOverridesMax = 1024;
// The guest CID of the vsock device: a detached VM's (its exec agent's) and every machine's in
// the snapshot layout (which has the device, without a host side unless the run is detached).
inline constexpr uint64_t kDetachedGuestCid = 3;

// Which network the guest gets.
enum class NetworkMode {
  kUser,  // rootless user-mode networking: 10.0.2.15/24 behind 10.0.2.2, DNS 10.0.2.3
  kNone,  // loopback only
  kTap,   // a tap device set up on the host (needs CAP_NET_ADMIN)
  // The VM takes the place of the one interface of a network namespace that a container engine
  // made (MachineOptions::netns; vm/net_netns.hpp): its address, gateway, MAC and MTU. Needs root.
  kNetns,
};

// An extra disk for the guest (/dev/vdb, ...).
struct ExtraDisk {
  std::filesystem::path path;
  bool read_only = false;
};

// Everything a run is made of besides the image's own config.
struct MachineOptions {
  std::filesystem::path kernel;  // required: find_guest_kernel() or build_guest_kernel()
  // The root: exactly one of `rootfs` and `root_dir`.
  std::filesystem::path rootfs;  // a converted root filesystem (never modified)
  std::filesystem::path keep;    // when set: run on a read-write copy made here, which stays
  // A host directory (root_dir.hpp), served by a virtiofsd started by build_machine and booted
  // from an initramfs holding only the init; its config goes to the guest in the overrides.
  std::optional<RootDirectory> root_dir;
  std::filesystem::path init;  // root_dir: the init for the initramfs; empty: find_init_binary()
  // What the guest init applies over the image config (docker-style): entrypoint, cmd, env,
  // working_dir, user, hostname, dns, tty, interactive. `net` is filled in here.
  guestabi::RunOverrides overrides;
  uint64_t memory_mib = 256;             // at least 32
  unsigned cpus = 1;                     // 1 to 64
  bool hugepages = false;                // back guest RAM with 2 MiB huge pages
  std::chrono::milliseconds timeout{0};  // 0: none
  std::vector<ExtraDisk> disks;          // after the root disk, in order
  // Host directories (each served by a virtiofsd started by build_machine) and tmpfs mounts
  // (mounts.hpp), mounted by the guest init before the workload, parents before children.
  std::vector<Mount> mounts;
  std::filesystem::path virtiofsd;  // empty: find_virtiofsd()
  // build_machine starts no virtiofsd: PreparedMachine::deferred_shares says what to start, and
  // config.fs gets their devices only once they run (a detached VM's monitor does both).
  bool defer_shares = false;
  std::filesystem::path volumes_dir;  // the volume store; empty: VolumeStore::default_dir()
  NetworkMode network = NetworkMode::kUser;
  // netns: the network namespace (an OCI config's linux.namespaces path, /run/netns/NAME). The
  // engine publishes ports and names the DNS servers (overrides.dns, kept as given).
  std::filesystem::path netns;
  bool outbound = true;                  // the guest may reach the outside world (user, tap)
  bool host_loopback = false;            // user: 10.0.2.2 reaches the host's 127.0.0.1
  std::string tap_name;                  // tap: the device name; empty: the kernel picks one
  std::vector<vm::PortForward> publish;  // host ports forwarded to guest ports (docker -p)
  bool publish_all = false;         // also every port the image exposes, on free host ports (-P)
  std::vector<std::string> expose;  // more ports for publish_all: "80", "53/udp", "8000-8002/tcp"
  std::string image_config_json;  // the image config (ImageSource::config_bytes()), for publish_all
  bool verbose_boot = false;      // the guest kernel's boot messages on the console
  int console_out_fd = 1;         // where the console goes (not owned); -1 discards it
  int console_err_fd = 2;         // the workload's stderr without a tty (not owned); -1: away
  int console_in_fd = -1;         // the console's input (not owned); -1: none
  // Snapshots (snapshots.hpp, docs/snapshots.md). With snapshot_layout the guest init stops at
  // its snapshot point and only then reads the overrides, from a disk of a fixed size: a
  // snapshot taken there serves every later run of the same image, kernel and machine shape.
  // Only for a root filesystem without mounts, extra disks, keep or huge pages, and with no
  // network, the user-mode one or a tap device of img2vm's (virtio-fs and an engine's
  // namespace cannot be in a snapshot yet): snapshot_unsupported(). The layout has a vsock device
  // (CID kDetachedGuestCid; a detached VM's monitor gives it its socket), so attached and detached
  // runs resume the same snapshots. A run's NIC has a MAC of its own (52:54:00 and three random
  // bytes), which the init sets, so VMs resumed from one snapshot differ in it.
  bool snapshot_layout = false;
  // Resume this snapshot (a SnapshotStore directory) instead of booting; implies
  // snapshot_layout. The config keeps the cold boot of the same layout: a VMM that refuses the
  // snapshot (another CPU, damaged files) boots that instead (vm::MachineConfig::restore_from).
  std::filesystem::path snapshot;
};

// Why `o` cannot use the snapshot layout, in a few words ("mounts (virtio-fs)", "extra disks");
// empty when it can.
std::string snapshot_unsupported(const MachineOptions& o);

// A MachineConfig ready to run, and what it refers to.
struct PreparedMachine {
  vm::MachineConfig config;
  guestabi::RunOverrides overrides;  // what the guest init receives (the network included)
  UniqueFd overrides_disk;  // the overrides when too long for the command line (config's last disk)
  std::shared_ptr<vm::TapBackend> tap;  // kTap: the host side, undone when the last owner lets go
  // kNetns: the tap in the engine's namespace (config.net->tap is its descriptor, not owned); the
  // namespace is restored when the last owner lets go after the VM has ended.
  std::shared_ptr<vm::NetnsTap> netns;
  // One virtiofsd per bind mount, tags img2vm-fs0, img2vm-fs1, ... in order; config.fs holds
  // their sockets (not owned), so these must outlive the VM.
  // With a root directory, its virtiofsd comes last (tag img2vm-root).
  std::vector<Virtiofsd> shares;
  // MachineOptions::defer_shares: the same, not started yet (and not in config.fs).
  std::vector<DeferredShare> deferred_shares;
  // The volumes the mounts use, each locked (shared) while its lease lives: keep them, and their
  // descriptors open in img2vm-vmm, as long as the VM runs.
  std::vector<VolumeLease> volumes;
  UniqueFd initramfs;         // root_dir: the initramfs (config.initrd is /proc/self/fd/N of it)
  bool ports_chosen = false;  // some host port is picked when the VM starts
};

// The ports the image config (its ExposedPorts) and `expose` name, as "PORT/PROTO", in order
// without repeats. Throws Error(kInvalidArgument) naming a bad value.
std::vector<std::string> exposed_ports(const std::string& image_config_json,
                                       const std::vector<std::string>& expose);

// Assembles the machine. Throws Error(kInvalidArgument) for contradicting or out-of-range
// options (check_root_command's error too), Error(kLimit) for too many disks; kTap sets up the host
// side now, kNetns the tap and redirection in the namespace (NetnsTap's errors), and bind mounts
// and volumes start their virtiofsd now (virtiofsd.hpp: errors for a missing source or virtiofsd);
// volumes are created, filled from `rootfs` on first use and locked (volumes.hpp).
PreparedMachine build_machine(MachineOptions options);

}  // namespace img2vm::runtime
