// The rootfs cache: keys, lookups, sidecars, and what prune removes and keeps.
#include "img2vm/rootfs/cache.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <set>
#include <string>

#include "img2vm/base/fd.hpp"

using namespace img2vm;
using namespace img2vm::rootfs;
namespace fs = std::filesystem;

namespace {
CacheKey key(const std::string& manifest, const std::string& options = "\n\n\n") {
  return {manifest, "linux/amd64", "sha256:1111", "0.1.0", options};
}
std::set<std::string> names(const fs::path& dir) {
  std::set<std::string> out;
  for (auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}
}  // namespace

TEST(RootfsCache, KeysCoverEveryInputAndKeepTheirFormat) {
  RootfsCache c("/cache");
  CacheKey k = key("sha256:aaaa");
  EXPECT_EQ(c.path_for(k), c.path_for(key("sha256:aaaa")));
  EXPECT_EQ(c.path_for(k).parent_path(), fs::path("/cache"));
  EXPECT_EQ(c.path_for(k).extension(), ".ext4");
  EXPECT_EQ(c.path_for(k).stem().string().size(), 32u);
  std::set<fs::path> seen = {c.path_for(k)};
  CacheKey v = k;
  v.platform = "linux/arm64";
  seen.insert(c.path_for(v));
  v = k;
  v.init_digest.clear();
  seen.insert(c.path_for(v));
  v = k;
  v.version = "0.2.0";
  seen.insert(c.path_for(v));
  seen.insert(c.path_for(key("sha256:aaaa", "1G\n\n\n")));
  seen.insert(c.path_for(key("sha256:bbbb")));
  EXPECT_EQ(seen.size(), 6u) << "two different inputs share a cache entry";
}

TEST(RootfsCache, LookupRecordListAndPrune) {
  TempDir dir("rootfs-cache");
  RootfsCache c(dir.path());
  CacheKey a = key("sha256:aaaa"), b = key("sha256:bbbb");
  EXPECT_FALSE(c.lookup(a));
  write_file_atomic(c.path_for(a), std::string(8192, 'a'));
  write_file_atomic(c.path_for(b), std::string(4096, 'b'));
  c.record(a);
  c.record(b);
  ASSERT_TRUE(c.lookup(a));
  EXPECT_EQ(*c.lookup(a), c.path_for(a));
  // An entry from before sidecars existed, an orphaned sidecar, and temporary files.
  fs::path legacy = dir.path() / "0123456789abcdef0123456789abcdef.ext4";
  write_file_atomic(legacy, "legacy");
  write_file_atomic(dir.path() / "fedcba9876543210fedcba9876543210.json", "{}");
  write_file_atomic(dir.path() / ".x.ext4.tmp-old", "partial");
  fs::last_write_time(dir.path() / ".x.ext4.tmp-old",
                      fs::file_time_type::clock::now() - std::chrono::hours(2));
  write_file_atomic(dir.path() / ".y.ext4.tmp-new", "a convert in progress");

  auto entries = c.list();
  ASSERT_EQ(entries.size(), 3u);
  std::set<std::string> manifests;
  for (const auto& e : entries) {
    manifests.insert(e.manifest_digest);
    if (e.path == c.path_for(a)) {
      EXPECT_GE(e.bytes, 8192u);
    }
  }
  EXPECT_EQ(manifests, (std::set<std::string>{"", "sha256:aaaa", "sha256:bbbb"}));

  auto r = c.prune([](const RootfsCache::Entry& e) { return e.manifest_digest == "sha256:aaaa"; });
  EXPECT_EQ(r.files,
            5u);  // b + its sidecar, the legacy entry, the orphaned sidecar, the old temp file
  EXPECT_GE(r.bytes, 4096u);
  std::string ka = c.path_for(a).filename().string();
  EXPECT_EQ(names(dir.path()),
            (std::set<std::string>{ka, fs::path(ka).replace_extension(".json").string(),
                                   ".y.ext4.tmp-new"}));
  EXPECT_TRUE(c.lookup(a));
  EXPECT_FALSE(c.lookup(b));
}
