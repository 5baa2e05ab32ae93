#include "img2vm/rootfs/cache.hpp"

#include <sys/stat.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <system_error>

#include "img2vm/base/digest.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

namespace img2vm::rootfs {

namespace fs = std::filesystem;

namespace {

std::string key_hash(const CacheKey& k) {
  // The layout of this text is the cache's format: changing it orphans every entry.
  Sha256 h;
  h.update("img2vm-rootfs-v1\n" + k.manifest_digest + "\n" + k.platform + "\n" +
           (k.init_digest.empty() ? "no-init" : k.init_digest) + "\n" + k.version + "\n" +
           k.options);
  return h.finish().hex().substr(0, 32);
}

uint64_t disk_bytes(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return 0;
  return uint64_t(st.st_blocks) * 512;
}

fs::path sidecar(const fs::path& ext4) {
  fs::path s = ext4;
  return s.replace_extension(".json");
}

}  // namespace

RootfsCache::RootfsCache(fs::path dir) : dir_(std::move(dir)) {}

fs::path RootfsCache::path_for(const CacheKey& key) const {
  return dir_ / (key_hash(key) + ".ext4");
}

std::optional<fs::path> RootfsCache::lookup(const CacheKey& key) const {
  fs::path p = path_for(key);
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return std::nullopt;
  fs::last_write_time(p, fs::file_time_type::clock::now(), ec);  // last use, best effort
  return p;
}

void RootfsCache::record(const CacheKey& key) const {
  nlohmann::json j = {{"manifest_digest", key.manifest_digest},
                      {"platform", key.platform},
                      {"init_digest", key.init_digest},
                      {"version", key.version},
                      {"options", key.options}};
  write_file_atomic(sidecar(path_for(key)), j.dump() + "\n");
}

std::vector<RootfsCache::Entry> RootfsCache::list() const {
  std::vector<Entry> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    if (e.path().extension() != ".ext4" || !e.is_regular_file(ec)) continue;
    Entry en;
    en.path = e.path();
    en.bytes = disk_bytes(e.path());
    try {
      auto j = nlohmann::json::parse(read_file(sidecar(e.path())));
      if (j.is_object() && j.contains("manifest_digest") && j["manifest_digest"].is_string())
        en.manifest_digest = j["manifest_digest"].get<std::string>();
    } catch (const std::exception&) {
      // no sidecar (an older img2vm, or an interrupted convert): unknown origin
    }
    out.push_back(std::move(en));
  }
  return out;
}

RootfsCache::PruneResult RootfsCache::prune(const std::function<bool(const Entry&)>& keep) const {
  PruneResult r;
  auto remove = [&](const fs::path& p) {
    uint64_t b = disk_bytes(p);
    std::error_code ec;
    if (fs::remove(p, ec)) {
      ++r.files;
      r.bytes += b;
    } else if (ec) {
      throw Error(ErrorKind::kIo, "cannot remove " + p.string() + ": " + ec.message());
    }
  };
  for (const Entry& e : list())
    if (!keep(e)) {
      remove(e.path);
      remove(sidecar(e.path));
    }
  // Leftovers: sidecars whose filesystem is gone, and old temporary files.
  const auto cutoff = fs::file_time_type::clock::now() - std::chrono::hours(1);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    const fs::path& p = e.path();
    if (p.extension() == ".json" && !fs::exists(fs::path(p).replace_extension(".ext4"))) {
      remove(p);
    } else if (p.extension() != ".ext4" && p.extension() != ".json" && e.is_regular_file(ec)) {
      std::error_code tec;
      auto t = fs::last_write_time(p, tec);
      if (!tec && t < cutoff) remove(p);
    }
  }
  return r;
}

}  // namespace img2vm::rootfs
