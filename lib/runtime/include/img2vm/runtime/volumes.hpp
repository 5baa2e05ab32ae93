// Named and anonymous volumes, as docker keeps them: one directory per volume under
// <home>/volumes (home: registry::Store::default_home()), NAME/_data holding the content a run
// shares with the guest through virtio-fs and NAME/volume.json its metadata. A run holds a shared
// flock on NAME for the VM's lifetime (VolumeLease); remove and prune take it exclusively without
// waiting and refuse a volume in use.
//
//   img2vm::runtime::VolumeStore vs;
//   vs.create("data");
//   img2vm::runtime::VolumeLease l = vs.use("data", root.path, "/var/lib/data", true);
//   // share l.volume.mountpoint with the guest while `l` lives
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "img2vm/base/fd.hpp"

namespace img2vm::runtime {

// docker's rule for local volume names: [a-zA-Z0-9][a-zA-Z0-9_.-]+, here at most 255 bytes.
bool is_volume_name(const std::string& name);
// Throws Error(kInvalidArgument) with docker's message when `name` is not a volume name.
void check_volume_name(const std::string& name);

struct Volume {
  std::string name;
  std::filesystem::path mountpoint;  // <dir>/NAME/_data
  std::string created_at;            // RFC 3339, UTC
  bool anonymous = false;
};

// A run's hold on a volume: the shared lock lives in `lock` (an open descriptor of the volume's
// directory, which must stay open, across an exec too, as long as the VM runs).
struct VolumeLease {
  Volume volume;
  bool copied = false;  // the image's content was copied in now
  UniqueFd lock;
};

class VolumeStore {
 public:
  // <registry::Store::default_home()>/volumes.
  static std::filesystem::path default_dir();
  // Opens (creating if needed) the volumes directory `dir`.
  explicit VolumeStore(std::filesystem::path dir = default_dir());
  const std::filesystem::path& dir() const { return dir_; }

  // Creates the volume (atomically: it appears whole or not at all), or returns it when it
  // exists. An empty name gives a random 64-hex name. `anonymous` marks it as docker marks the
  // volumes `run -v /path` creates: prune without `all` removes only those.
  Volume create(const std::string& name = "", bool anonymous = false);
  // The volume, or nothing when there is none by that name.
  std::optional<Volume> find(const std::string& name) const;
  // Every volume, by name.
  std::vector<Volume> list() const;
  // Bytes of the volume's files (regular files' sizes), for ls and prune.
  uint64_t disk_usage(const Volume& v) const;

  // Removes the volume and its content. Error(kNotFound) when missing, Error(kInvalidArgument)
  // "volume NAME is in use" while a run holds it.
  void remove(const std::string& name);

  struct PruneResult {
    std::vector<std::string> removed;
    uint64_t bytes = 0;
  };
  // Removes the anonymous volumes (`all`: every volume) no run holds.
  PruneResult prune(bool all);

  // For a run: the volume `name` (empty: a new anonymous one), created when missing, held with
  // a shared lock. When `copy` and its _data is empty, the directory `target` of the ext4 image
  // `rootfs` is copied in first (rootfs::extract_tree; nothing when the image has no such
  // directory), as docker does on a volume's first use.
  VolumeLease use(const std::string& name, const std::filesystem::path& rootfs,
                  const std::string& target, bool copy);

 private:
  std::filesystem::path path_of(const std::string& name) const { return dir_ / name; }
  std::optional<Volume> read(const std::string& name) const;
  UniqueFd open_dir(const std::string& name) const;

  std::filesystem::path dir_;
};

}  // namespace img2vm::runtime
