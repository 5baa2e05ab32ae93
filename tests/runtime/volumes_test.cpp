// The volume store (volumes.hpp) on a temporary directory: create, list, find, remove, prune,
// the in-use lock a run holds, names, and that nothing half made is ever listed.
#include "img2vm/runtime/volumes.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>

#include <fstream>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

namespace img2vm::runtime {
namespace {

namespace fs = std::filesystem;

class Volumes : public ::testing::Test {
 protected:
  TempDir tmp{"img2vm-volumes-test"};
  VolumeStore vs{tmp.path() / "volumes"};

  static std::vector<std::string> names(const std::vector<Volume>& vols) {
    std::vector<std::string> out;
    for (const auto& v : vols) out.push_back(v.name);
    return out;
  }
};

TEST_F(Volumes, CreateFindListAndMetadata) {
  Volume v = vs.create("data");
  EXPECT_EQ(v.name, "data");
  EXPECT_EQ(v.mountpoint, vs.dir() / "data" / "_data");
  EXPECT_TRUE(fs::is_directory(v.mountpoint));
  EXPECT_TRUE(fs::is_empty(v.mountpoint));
  EXPECT_FALSE(v.anonymous);
  EXPECT_EQ(v.created_at.size(), 20u) << v.created_at;  // 2026-12-06T07:40:01Z
  EXPECT_EQ(v.created_at.back(), 'Z');
  // Created again: the same volume, content untouched.
  std::ofstream(v.mountpoint / "f") << "kept";
  Volume again = vs.create("data");
  EXPECT_EQ(again.created_at, v.created_at);
  EXPECT_TRUE(fs::exists(v.mountpoint / "f"));

  Volume anon = vs.create("", true);
  EXPECT_TRUE(anon.anonymous);
  EXPECT_FALSE(vs.create().anonymous);  // volume create without a name: random, not anonymous
  EXPECT_EQ(anon.name.size(), 64u);
  EXPECT_EQ(anon.name.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(vs.create().name, anon.name);

  ASSERT_TRUE(vs.find("data"));
  EXPECT_FALSE(vs.find("nosuch"));
  EXPECT_FALSE(vs.find("../volumes"));
  EXPECT_EQ(vs.list().size(), 4u);
  EXPECT_EQ(vs.disk_usage(*vs.find("data")), 4u);
}

TEST_F(Volumes, BadNamesAreRefusedWithDockersMessage) {
  for (const char* n : {"a", "-x", ".x", "_x", "a/b", "..", "a b", "x\n"}) {
    try {
      vs.create(n);
      ADD_FAILURE() << n << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("includes invalid characters for a local volume name"),
                std::string::npos)
          << e.what();
    }
  }
  EXPECT_THROW(vs.create(std::string(256, 'a')), Error);
  EXPECT_NO_THROW(vs.create(std::string(255, 'a')));
  EXPECT_TRUE(is_volume_name("a1.b_c-d"));
}

TEST_F(Volumes, TemporaryAndForeignEntriesAreNotListed) {
  vs.create("data");
  fs::create_directories(vs.dir() / ".new.abc123" / "_data");  // an interrupted create
  std::ofstream(vs.dir() / "stray-file") << "x";
  fs::create_symlink("/", vs.dir() / "link");
  EXPECT_EQ(names(vs.list()), std::vector<std::string>{"data"});
  EXPECT_FALSE(vs.find("link"));
}

TEST_F(Volumes, RemoveTakesEverythingEvenReadOnlyDirectories) {
  Volume v = vs.create("data");
  fs::create_directories(v.mountpoint / "a" / "b");
  std::ofstream(v.mountpoint / "a" / "b" / "f") << "x";
  fs::permissions(v.mountpoint / "a", fs::perms::owner_read | fs::perms::owner_exec);
  vs.remove("data");
  EXPECT_FALSE(fs::exists(vs.dir() / "data"));
  EXPECT_TRUE(fs::is_empty(vs.dir()));
  try {
    vs.remove("data");
    ADD_FAILURE() << "removed twice";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_STREQ(e.what(), "no such volume: data");
  }
}

TEST_F(Volumes, InUseWhileARunHoldsIt) {
  vs.create("data");
  {
    VolumeLease l = vs.use("data", "/nonexistent.ext4", "/x", false);
    EXPECT_EQ(l.volume.name, "data");
    EXPECT_FALSE(l.copied);
    try {
      vs.remove("data");
      ADD_FAILURE() << "removed while in use";
    } catch (const Error& e) {
      EXPECT_STREQ(e.what(), "volume data is in use");
    }
    // A second run may share it.
    VolumeLease other = vs.use("data", "/nonexistent.ext4", "/x", false);
    EXPECT_TRUE(vs.prune(true).removed.empty());
    EXPECT_TRUE(vs.find("data"));
  }
  vs.remove("data");
  EXPECT_FALSE(vs.find("data"));
}

TEST_F(Volumes, UseCreatesOnFirstUseAndAnonymousGetANewName) {
  VolumeLease l = vs.use("fresh", "/nonexistent.ext4", "/x", false);
  EXPECT_FALSE(l.volume.anonymous);
  EXPECT_TRUE(fs::is_directory(l.volume.mountpoint));
  VolumeLease a = vs.use("", "/nonexistent.ext4", "/x", false);
  EXPECT_TRUE(a.volume.anonymous);
  EXPECT_TRUE(vs.find(a.volume.name)->anonymous);
  // A volume with content is never copied into: the image is not even opened.
  std::ofstream(l.volume.mountpoint / "f") << "x";
  EXPECT_FALSE(vs.use("fresh", "/nonexistent.ext4", "/x", true).copied);
}

TEST_F(Volumes, PruneTakesAnonymousOnlyUnlessAll) {
  vs.create("named");
  vs.create();
  Volume a = vs.create("", true);
  std::ofstream(a.mountpoint / "f") << "12345";
  Volume held = vs.create("", true);
  VolumeLease l = vs.use(held.name, "/nonexistent.ext4", "/x", false);
  VolumeStore::PruneResult r = vs.prune(false);
  EXPECT_EQ(r.removed, std::vector<std::string>{a.name});
  EXPECT_EQ(r.bytes, 5u);
  EXPECT_EQ(names(vs.list()).size(), 3u);  // named, random, held
  r = vs.prune(true);
  EXPECT_EQ(r.removed.size(), 2u);
  EXPECT_EQ(names(vs.list()), std::vector<std::string>{held.name});
}

}  // namespace
}  // namespace img2vm::runtime
