// The kernel command line that boots an img2vm rootfs, and the `img2vm.run=` parameter that
// carries the per-run overrides to the init (docs/guest-abi.md §2-3).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "img2vm/guestabi/config.hpp"

namespace img2vm::guestabi {

// The kernel command line key of the run overrides; its value is the base64url JSON (inline) or
// kRunParamDiskPrefix and the device holding an overrides disk (overrides_disk.hpp).
inline constexpr std::string_view kRunParam = "img2vm.run";
inline constexpr std::string_view kRunParamDiskPrefix = "blk:";

// The command line for an img2vm rootfs: the console on the UART, the image's ext4 on the first
// disk with kInitPath as PID 1, the VM ending on a panic or a reboot, no timer calibration;
// `quiet` unless `verbose`. `extra` (the img2vm.run= word, say) goes last; the runner adds its
// virtio_mmio.device= entries after it.
std::string image_cmdline(bool verbose, std::string_view extra = {});

// The kernel command line key naming the virtio-fs share that is the root file system when the
// runner boots a host directory (run --rootfs) from an initramfs holding only the init:
// "img2vm.root=<tag>" or "img2vm.root=<tag>,ro".
inline constexpr std::string_view kRootParam = "img2vm.root";

struct RootShare {
  std::string tag;         // valid_fs_tag()
  bool read_only = false;  // mounted read-only (the host refuses writes as well)

  friend bool operator==(const RootShare&, const RootShare&) = default;
};

// "img2vm.root=<tag>[,ro]". Throws Error for a tag valid_fs_tag() refuses.
std::string root_share_param(const RootShare& root);
// The value of an `img2vm.root=` parameter. Throws Error naming the parameter.
RootShare parse_root_share(std::string_view value);

// The command line for a host directory as the root: as image_cmdline, but no root disk: the
// kernel starts kInitPath from the runner's initramfs (rdinit=), and the init mounts `root` over
// / before it goes on as it does on an image's ext4 (docs/guest-abi.md §2).
std::string directory_cmdline(bool verbose, const RootShare& root, std::string_view extra = {});

// "img2vm.run=<base64url of to_json(o)>". The kernel limits the whole command line to 2048 bytes
// on x86: a runner whose overrides do not fit uses run_overrides_disk_param instead.
std::string run_overrides_kernel_param(const RunOverrides& o);
// "img2vm.run=blk:<device>": the overrides are on that block device (encode_overrides_disk).
std::string run_overrides_disk_param(std::string_view device);

// The value of the last `key=value` word of a kernel command line ("..." quoting as the kernel
// does it; words after "--" belong to init's argv and are not looked at), or nullopt.
std::optional<std::string> kernel_param(std::string_view cmdline, std::string_view key);

// The kernel command line key that makes the init stop at the snapshot point (docs/guest-abi.md
// §2, docs/snapshots.md): "img2vm.snapshot=1". The init then writes BOOT_MARK kMarkSnapshotPoint
// before it reads anything a run may change, and takes its overrides from a disk only (the
// command line is frozen in the snapshot, the disk is a new one for every restore).
inline constexpr std::string_view kSnapshotParam = "img2vm.snapshot";
// "img2vm.snapshot=1".
std::string snapshot_param();
// Whether `cmdline` asks for the snapshot point: its last img2vm.snapshot= is 1 (0 or absent:
// no). Throws Error naming the parameter for any other value.
bool snapshot_requested(std::string_view cmdline);

// Decodes an inline `img2vm.run=` value (base64url JSON). Throws Error naming the parameter.
RunOverrides decode_inline_run_param(std::string_view value);

}  // namespace img2vm::guestabi
