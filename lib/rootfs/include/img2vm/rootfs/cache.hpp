// The rootfs cache: root filesystems convert made, keyed by everything that changes their bytes
// (manifest, platform, init binary, img2vm version, size options), so `img2vm run` converts an
// image once and then boots copy-on-write views of the cached file. Each entry is
// <key>.ext4 plus a <key>.json sidecar saying which manifest it came from, so prune can drop
// entries whose image left the store. Entries are replaced atomically (convert writes a temp
// file and renames it); a VM that has an entry open keeps its data even if prune removes it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace img2vm::rootfs {

// Everything that changes a converted rootfs's bytes: the cache entry's name is its hash.
struct CacheKey {
  std::string manifest_digest;  // "sha256:..."
  std::string platform;         // "linux/amd64"
  std::string init_digest;      // of the injected init; empty: no init
  std::string version;          // img2vm's
  std::string options;          // the convert options that change the output, as text
};

// Converted root filesystems, one file per CacheKey, in one directory.
class RootfsCache {
 public:
  // Opens (creating if needed) the cache in `dir`.
  explicit RootfsCache(std::filesystem::path dir);
  // The cache directory.
  const std::filesystem::path& dir() const { return dir_; }

  // Where the entry for `key` lives (it may not exist yet).
  std::filesystem::path path_for(const CacheKey& key) const;
  // The entry's path when it exists (its mtime is refreshed: prune can go by last use).
  std::optional<std::filesystem::path> lookup(const CacheKey& key) const;
  // Writes the sidecar of a freshly converted entry (atomically).
  void record(const CacheKey& key) const;

  // One cached rootfs.
  struct Entry {
    std::filesystem::path path;
    std::string manifest_digest;  // empty when the sidecar is missing or unreadable
    uint64_t bytes = 0;           // space used on disk (sparse files count their data only)
  };
  // The cached files.
  std::vector<Entry> list() const;

  // What prune() removed.
  struct PruneResult {
    uint64_t files = 0, bytes = 0;
  };
  // Removes every entry `keep` says no to, sidecars without an image, and temporary files
  // left by interrupted converts that are more than an hour old.
  PruneResult prune(const std::function<bool(const Entry&)>& keep) const;

 private:
  std::filesystem::path dir_;
};

}  // namespace img2vm::rootfs
