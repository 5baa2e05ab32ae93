// File systems a run mounts in the guest, from docker's syntax: -v/--volume HOST:GUEST[:ro|rw],
// --mount type=bind|volume|tmpfs,... and --tmpfs PATH[:OPTIONS]. A bind mount is a host
// directory shared through virtio-fs (one virtiofsd each, virtiofsd.hpp); a volume is a
// directory of the volume store (volumes.hpp) shared the same way; a tmpfs lives in guest memory.
// build_machine() turns them into the machine's virtio-fs devices and the guest init's mounts.
//
//   mo.mounts.push_back(img2vm::runtime::parse_volume("/srv/data:/data:ro"));
//   mo.mounts.push_back(img2vm::runtime::parse_tmpfs("/scratch:size=64m"));
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace img2vm::runtime {

// kFile: a copy of a host file made when the run is set up (an OCI bind mount of a regular file:
// the engine's /etc/hosts, a config file), which the guest init places at the target on a tmpfs
// of its own (guestabi::MountSpec::Type::kFile). Later changes on the host are not seen, and
// writes in the guest stay in the guest.
struct Mount {
  enum class Type { kBind, kTmpfs, kVolume, kFile };
  Type type = Type::kBind;
  std::filesystem::path source;  // kBind: the host directory, absolute (it must exist)
  std::string target;            // in the guest: absolute, normalised, never "/"
  bool read_only = false;
  uint64_t size = 0;          // kTmpfs: bytes; 0 for the kernel's default (half the guest's memory)
  uint32_t mode = 0;          // kTmpfs: permission bits; 0 for 01777. kFile: the file's bits
  std::string volume;         // kVolume: its name; empty for a new anonymous volume
  bool nocopy = false;        // kVolume: never copy the image's content in
  std::string content{};      // kFile: its bytes (guestabi::kMaxFileMountBytes at most)
  uint32_t uid = 0, gid = 0;  // kFile: its owner

  friend bool operator==(const Mount&, const Mount&) = default;
};

// docker's -v/--volume HOST:GUEST[:ro|rw], NAME:GUEST[:ro|rw|nocopy] and GUEST alone (an
// anonymous volume). HOST is an absolute path (./ and ../ paths are taken from the current
// directory); anything else must be a volume name (check_volume_name). Every failure is
// Error(kInvalidArgument) naming the spec.
Mount parse_volume(const std::string& spec);

// docker's --mount: comma-separated key=value fields. type=bind with source|src,
// target|destination|dst, readonly|ro[=true|false]; type=volume (the default) with an optional
// source (none: anonymous), target, readonly, volume-nocopy[=true|false]; type=tmpfs with
// target, tmpfs-size, tmpfs-mode, readonly. Unknown keys, a missing target or source, and keys
// of another type are errors, as docker's.
Mount parse_mount(const std::string& spec);

// docker's --tmpfs PATH[:OPTIONS], OPTIONS comma-separated: size=SIZE, mode=OCTAL, ro, rw.
Mount parse_tmpfs(const std::string& spec);

// Throws Error(kInvalidArgument) when two mounts share a target (docker's "Duplicate mount
// point") or there are more than guestabi::kMaxMounts.
void check_mounts(const std::vector<Mount>& mounts);

}  // namespace img2vm::runtime
