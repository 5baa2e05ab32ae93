// Snapshots of booted VMs in the store (issue #19, docs/snapshots.md): <home>/snapshots/<key>/
// holds what vm::Machine::save_snapshot wrote (memory, state, the root disk's writes) and
// snapshot.json. A snapshot is taken at the guest init's snapshot point, before the init has
// read the run's overrides, so one snapshot serves every run of the same image, kernel and
// machine shape: the key is a digest of those (SnapshotInputs), and a run looks it up.
//
//   img2vm::runtime::SnapshotStore ss;                      // <home>/snapshots
//   img2vm::runtime::SnapshotInputs in{kernel, rootfs, 256, 1};
//   img2vm::runtime::SnapshotInfo s = img2vm::runtime::create_snapshot(ss, in, {});
//   // A run resumes the snapshot that fits it, if any (what img2vm run does):
//   SnapshotChoice c = choose_snapshot(ss, mo, "demo/hello:latest");
//   if (c.snapshot) mo.snapshot = c.snapshot->dir;
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "img2vm/runtime/machine.hpp"

namespace img2vm::runtime {

// What a snapshot depends on: a run can only resume a snapshot taken with all of these.
struct SnapshotInputs {
  std::filesystem::path kernel;  // the guest kernel file (hashed)
  std::filesystem::path rootfs;  // the converted root filesystem, in the rootfs cache (its
                                 // name is the digest of its cache key: image, init, options)
  uint64_t memory_mib = 256;
  unsigned cpus = 1;
  std::string image;  // for ls: the image reference the rootfs came from (not part of the key)
  std::string kernel_digest;  // the kernel's "sha256:...", when already known (else hashed)
  // kNone, kUser or kTap: whether the VM has a NIC, and of which kind (a tap device's offers
  // offloads the user network's does not, so its guest's driver took other features).
  NetworkMode network = NetworkMode::kNone;
};

// The snapshot's key: the first 32 hex digits of a SHA-256 over the kernel's digest, the
// rootfs's name and size, memory, vCPUs, network, img2vm's version and the snapshot layout's
// version.
std::string snapshot_key(const SnapshotInputs& in);

// One stored snapshot (snapshot.json).
struct SnapshotInfo {
  std::string key;
  std::filesystem::path dir;
  std::string image;
  std::string kernel_digest;  // "sha256:..."
  std::string rootfs;         // the rootfs file's name in the cache
  uint64_t memory_mib = 0;
  unsigned cpus = 0;
  std::string network;     // "none" or "user"
  std::string created_at;  // RFC 3339, UTC
  uint64_t bytes = 0;      // space used on disk (memory is sparse)
};

class SnapshotStore {
 public:
  // <registry::Store::default_home()>/snapshots.
  static std::filesystem::path default_dir();
  // The directory is created on the first create(); reading a missing one finds nothing.
  explicit SnapshotStore(std::filesystem::path dir = default_dir());
  const std::filesystem::path& dir() const { return dir_; }

  // The kernel file's "sha256:..." digest, for SnapshotInputs::kernel_digest: remembered in
  // the store (under .kernel-digests/) by the file's device, inode, size, modification and
  // change times, so that a run does not hash an unchanged kernel again. Throws as
  // sha256_file() does.
  std::string kernel_digest(const std::filesystem::path& kernel) const;

  // The snapshot for `key` when there is a whole one (its snapshot.json and state present).
  std::optional<SnapshotInfo> find(const std::string& key) const;
  // Every whole snapshot, newest first.
  std::vector<SnapshotInfo> list() const;
  // Removes the snapshot whose key is `key_or_prefix` (or starts with it, when that names
  // exactly one). VMs already resumed from it keep running (their memory is mapped from an
  // unlinked file). Error(kNotFound) when none matches, kInvalidArgument when several do.
  SnapshotInfo remove(const std::string& key_or_prefix);
  struct PruneResult {
    std::vector<std::string> removed;
    uint64_t bytes = 0;
  };
  // Removes snapshots whose kernel or rootfs is gone or changed (`all`: every snapshot), and
  // directories left by interrupted creates.
  PruneResult prune(bool all);

  // A new, empty directory in the store for a snapshot being written (removed by the caller on
  // failure; commit() publishes it).
  std::filesystem::path begin() const;
  // Writes snapshot.json into `tmp` and renames it to the key's directory, replacing an older
  // snapshot of the same key. Returns the stored snapshot.
  SnapshotInfo commit(const std::filesystem::path& tmp, const SnapshotInputs& in) const;

 private:
  std::filesystem::path dir_;
};

// Why a stored snapshot does not fit `in` (kernel, root filesystem, memory, vCPUs), in one line;
// empty when it does. Its key says so already, unless snapshot.json was edited: checked again
// before a run resumes it. Also what a run reports about a snapshot of the same image and shape
// taken with another kernel.
std::string snapshot_mismatch(const SnapshotInfo& s, const SnapshotInputs& in);

// The stored snapshot a run of `mo` (its kernel, rootfs, memory, vCPUs and network; `image` the
// reference the rootfs came from) resumes, and why others of the same image are not used.
struct SnapshotChoice {
  std::optional<SnapshotInfo> snapshot;  // set MachineOptions::snapshot to its dir to resume it
  // The snapshot of this run's key fits, but the run's devices do not fit in a snapshot
  // (snapshot_unsupported: mounts, a tap network...): "snapshot KEY not used: this run has WHY".
  // Informational: the run boots as it would without one.
  std::string skipped;
  // Snapshots of this rootfs that do not fit (taken with another kernel, or an edited
  // snapshot.json), one line each, "snapshot KEY of this image not used: WHY; booting (img2vm
  // snapshot create takes a new one)": worth a warning.
  std::vector<std::string> mismatched;
};
// Reads the store's list; hashes the kernel (SnapshotStore::kernel_digest, remembered) only when
// the store holds a snapshot. Throws as SnapshotStore::kernel_digest does.
SnapshotChoice choose_snapshot(const SnapshotStore& store, const MachineOptions& mo,
                               const std::string& image);

// Boots `o` in this process (with the snapshot layout, and the kernel, root filesystem, memory,
// vCPUs and network of `in`) up to the guest init's snapshot point, saves the VM into `store` under
// its key (replacing an older one) and stops it. Error(kIo) when the guest does not get there
// within `timeout` or ends first (what it printed went to o.console_out_fd); nothing is left in the
// store then.
SnapshotInfo create_snapshot(const SnapshotStore& store, const SnapshotInputs& in, MachineOptions o,
                             std::chrono::milliseconds timeout);

}  // namespace img2vm::runtime
