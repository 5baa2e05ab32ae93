// extract_tree(): a directory of an ext4 made by our writer from real layer tars copied out into
// a host directory, as a new volume is filled: content, modes, owners, mtimes, symlinks kept as
// links (never followed on the host), special files, the bounds, and no half copy left behind.
#include "img2vm/rootfs/extract.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <fstream>
#include <sstream>

#include "fs_snapshot.hpp"
#include "image_builder.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/rootfs/convert.hpp"

using namespace img2vm;
using namespace img2vm::testing;
namespace fs = std::filesystem;

namespace {

class Extract : public ::testing::Test {
 protected:
  TempDir tmp{"img2vm-extract-test"};
  fs::path dest = tmp.path() / "vol" / "_data";

  void SetUp() override { fs::create_directories(dest); }

  fs::path convert_image(const std::vector<Entry>& entries) {
    ImageSpec spec;
    spec.layers.push_back(layer(entries));
    BuiltImage img = build_image(spec);
    rootfs::ConvertOptions opt;
    opt.output = tmp.path() / "rootfs.ext4";
    rootfs::convert(image_input(img, tmp.path() / "in"), opt);
    return opt.output;
  }

  static struct stat lstat_of(const fs::path& p) {
    struct stat st {};
    EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
    return st;
  }

  static std::string slurp(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Nothing but `dest` in the volume's directory: no temporary copy left.
  void expect_no_leftovers() {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dest.parent_path()))
      names.push_back(e.path().filename().string());
    EXPECT_EQ(names, std::vector<std::string>{"_data"});
  }
};

TEST_F(Extract, CopiesContentModesOwnersMtimesAndLinks) {
  fs::path img = convert_image({
      dir("srv/data", 0750).owner(1000, 1001).with_mtime(1600000000),
      file("srv/data/hello", "hi\n", 0640).owner(1000, 1001).with_mtime(1500000000),
      file("srv/data/tool", "#!/bin/sh\n", 04755),
      dir("srv/data/sub/deeper", 0700),
      file("srv/data/sub/deeper/big", std::string(200000, 'x') + "end"),
      file("srv/data/sparse", std::string(300000, '\0') + "tail"),
      symlink_to("srv/data/passwd", "/etc/passwd"),
      symlink_to("srv/data/up", "../../../../../../tmp"),
      hardlink_to("srv/data/hello2", "srv/data/hello"),
      chardev("srv/data/null", 1, 3, 0666),
      fifo("srv/data/pipe", 0600),
  });
  rootfs::ExtractResult r = rootfs::extract_tree(img, "/srv/data", dest);
  ASSERT_TRUE(r.copied);
  EXPECT_EQ(r.skipped, 0u);
  EXPECT_EQ(r.entries, 11u);
  expect_no_leftovers();

  struct stat top = lstat_of(dest);  // the volume's root takes the image directory's attributes
  EXPECT_EQ(top.st_mode & 07777, 0750u);
  EXPECT_EQ(top.st_uid, 1000u);
  EXPECT_EQ(top.st_gid, 1001u);
  EXPECT_EQ(top.st_mtim.tv_sec, 1600000000);

  EXPECT_EQ(slurp(dest / "hello"), "hi\n");
  struct stat hello = lstat_of(dest / "hello");
  EXPECT_EQ(hello.st_mode & 07777, 0640u);
  EXPECT_EQ(hello.st_uid, 1000u);
  EXPECT_EQ(hello.st_mtim.tv_sec, 1500000000);
  EXPECT_EQ(lstat_of(dest / "tool").st_mode & 07777, 04755u);  // setuid kept after chown
  EXPECT_EQ(lstat_of(dest / "sub" / "deeper").st_mode & 07777, 0700u);
  EXPECT_EQ(slurp(dest / "sub" / "deeper" / "big"), std::string(200000, 'x') + "end");
  EXPECT_EQ(slurp(dest / "sparse"), std::string(300000, '\0') + "tail");
  EXPECT_LT(lstat_of(dest / "sparse").st_blocks * 512, 300000);  // the zeros stay a hole

  // Symlinks are copied as links, whatever they point at; nothing outside is touched.
  EXPECT_TRUE(fs::is_symlink(dest / "passwd"));
  EXPECT_EQ(fs::read_symlink(dest / "passwd"), "/etc/passwd");
  EXPECT_EQ(fs::read_symlink(dest / "up"), "../../../../../../tmp");
  EXPECT_EQ(slurp(dest / "hello2"), "hi\n");  // a hard link becomes a file of its own
  struct stat null = lstat_of(dest / "null");
  EXPECT_TRUE(S_ISCHR(null.st_mode));
  EXPECT_EQ(null.st_rdev, makedev(1, 3));
  EXPECT_TRUE(S_ISFIFO(lstat_of(dest / "pipe").st_mode));
}

TEST_F(Extract, SymlinksToHostFilesAreNeverFollowed) {
  const fs::path victim = tmp.path() / "victim";
  std::ofstream(victim) << "host";
  fs::permissions(victim, fs::perms::owner_read | fs::perms::owner_write);
  const struct stat before = lstat_of(victim);
  fs::path img = convert_image({dir("d"), symlink_to("d/link", victim.string())
                                              .owner(1234, 1234)
                                              .with_mtime(1400000000)
                                              .with_mode(0777)});
  ASSERT_TRUE(rootfs::extract_tree(img, "/d", dest).copied);
  struct stat link = lstat_of(dest / "link");
  EXPECT_TRUE(S_ISLNK(link.st_mode));
  EXPECT_EQ(link.st_uid, 1234u);
  EXPECT_EQ(link.st_mtim.tv_sec, 1400000000);
  const struct stat after = lstat_of(victim);
  EXPECT_EQ(after.st_uid, before.st_uid);
  EXPECT_EQ(after.st_mode, before.st_mode);
  EXPECT_EQ(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
  EXPECT_EQ(slurp(victim), "host");
}

TEST_F(Extract, UnprivilegedSkipsSpecialFiles) {
  fs::path img = convert_image({dir("d"), file("d/f", "x"), chardev("d/null", 1, 3),
                                blockdev("d/disk", 8, 0), fifo("d/pipe")});
  rootfs::ExtractLimits lim;
  lim.privileged = 0;
  rootfs::ExtractResult r = rootfs::extract_tree(img, "/d", dest, lim);
  ASSERT_TRUE(r.copied);
  EXPECT_EQ(r.skipped, 3u);
  EXPECT_TRUE(fs::exists(dest / "f"));
  EXPECT_FALSE(fs::exists(fs::symlink_status(dest / "null")));
  EXPECT_FALSE(fs::exists(fs::symlink_status(dest / "disk")));
}

TEST_F(Extract, SymlinksOnTheWayResolveInsideTheImage) {
  // /conf -> /etc/app in the image: the image's directory is copied, not the host's.
  fs::path img = convert_image({dir("etc/app"), file("etc/app/only-in-image", "yes"),
                                symlink_to("conf", "/etc/app"), symlink_to("loop", "loop")});
  ASSERT_TRUE(rootfs::extract_tree(img, "/conf", dest).copied);
  EXPECT_EQ(slurp(dest / "only-in-image"), "yes");
  fs::path other = tmp.path() / "other" / "_data";
  fs::create_directories(other);
  EXPECT_FALSE(rootfs::extract_tree(img, "/loop", other).copied);
}

TEST_F(Extract, MissingPathOrFileLeavesTheVolumeEmpty) {
  fs::path img = convert_image({file("etc/hostname", "box")});
  EXPECT_FALSE(rootfs::extract_tree(img, "/no/such/dir", dest).copied);
  EXPECT_FALSE(rootfs::extract_tree(img, "/etc/hostname", dest).copied);
  EXPECT_TRUE(fs::is_empty(dest));
  expect_no_leftovers();
}

TEST_F(Extract, NonEmptyDestinationIsLeftAlone) {
  fs::path img = convert_image({dir("d"), file("d/f", "image")});
  std::ofstream(dest / "mine") << "volume";
  EXPECT_FALSE(rootfs::extract_tree(img, "/d", dest).copied);
  EXPECT_EQ(slurp(dest / "mine"), "volume");
  EXPECT_FALSE(fs::exists(dest / "f"));
  expect_no_leftovers();
}

TEST_F(Extract, BoundsLeaveNoHalfCopy) {
  std::vector<Entry> entries;
  std::string path = "d";
  for (int i = 0; i < 12; ++i) {
    path += "/n";
    entries.push_back(dir(path));
  }
  entries.push_back(file(path + "/f", std::string(5000, 'y')));
  for (int i = 0; i < 20; ++i) entries.push_back(file("d/f" + std::to_string(i), "z"));
  fs::path img = convert_image(entries);
  auto kind_of = [&](rootfs::ExtractLimits lim) {
    try {
      rootfs::extract_tree(img, "/d", dest, lim);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("copying /d out of"), std::string::npos) << e.what();
      return e.kind();
    }
    return ErrorKind::kInternal;
  };
  rootfs::ExtractLimits deep;
  deep.max_depth = 10;
  EXPECT_EQ(kind_of(deep), ErrorKind::kLimit);
  rootfs::ExtractLimits many;
  many.max_entries = 25;
  EXPECT_EQ(kind_of(many), ErrorKind::kLimit);
  rootfs::ExtractLimits big;
  big.max_bytes = 4096;
  EXPECT_EQ(kind_of(big), ErrorKind::kLimit);
  EXPECT_TRUE(fs::is_empty(dest));
  expect_no_leftovers();
  rootfs::ExtractLimits enough;
  enough.max_depth = 12;
  enough.max_entries = 33;
  enough.max_bytes = 5020;
  EXPECT_TRUE(rootfs::extract_tree(img, "/d", dest, enough).copied);
}

}  // namespace
