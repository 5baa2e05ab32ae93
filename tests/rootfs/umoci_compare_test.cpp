// The ext4 convert() writes matches what `umoci unpack` (as root) lays out for the same image,
// path for path: type, mode, owner, size, content, link target, device numbers, xattrs,
// hardlink groups, mtime. The image exercises every layer semantic at once.
#include <gtest/gtest.h>
#include <unistd.h>

#include "fs_snapshot.hpp"
#include "image_builder.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/rootfs/convert.hpp"
#include "process.hpp"

using namespace img2vm;
using namespace img2vm::testing;
namespace fs = std::filesystem;

namespace {

ImageSpec semantics_image() {
  const std::string cap(
      "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 20);
  const std::string long_dir(120, 'd');
  const std::string long_file(150, 'f');
  ImageSpec spec;
  spec.layers.push_back(layer(
      {
          dir("etc"),
          file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
          file("etc/shadow", "root:*:1::::::\n", 0640).owner(0, 42),
          dir("usr"),
          dir("usr/bin"),
          file("usr/bin/su", "su", 04755),
          file("usr/bin/wall", "wall", 02755).owner(0, 5),
          file("usr/bin/ping", "ping", 0755)
              .xattr("security.capability", cap)
              .xattr("user.comment", "hi there"),
          file("usr/bin/a", "AAAA", 0755),
          hardlink_to("usr/bin/b", "usr/bin/a"),
          hardlink_to("usr/bin/c", "usr/bin/a"),
          dir("tmp", 01777),
          dir("home"),
          dir("home/user", 0700).owner(100000, 100000),
          file("home/user/f", "big ids", 0600).owner(70000, 80000).with_mtime(1234567890),
          dir("dev"),
          chardev("dev/null", 1, 3),
          chardev("dev/big", 300, 70000),
          blockdev("dev/sda", 8, 0),
          dir("run"),
          fifo("run/fifo", 0600),
          dir("opt"),
          dir("opt/" + long_dir),
          file("opt/" + long_dir + "/" + long_file, "long name"),
          symlink_to("opt/longlink", "/" + std::string(200, 'x')),
          symlink_to("opt/short", "../etc/passwd"),
          dir("opq"),
          file("opq/a", "a"),
          dir("opq/sub"),
          file("opq/sub/b", "b"),
          file("willbedir", "file first"),
          dir("willbefile"),
          file("willbefile/child", "c"),
          file("gone", "bye"),
          file("empty", ""),
          dir("dir-dated").with_mtime(1000000000),
      },
      LayerCompression::kGzip));
  spec.layers.push_back(layer(
      {
          whiteout("gone"),
          opaque("opq"),
          file("opq/new", "new"),
          whiteout("usr/bin/a"),
          hardlink_to("etc/link-to-lower", "etc/passwd"),
          dir("willbedir", 0711),
          file("willbedir/x", "x"),
          file("willbefile", "now a file"),
          dir("etc", 0750),
          symlink_to("lnk", "/usr"),
          file("usr/bin/su", "su2", 04711),
      },
      LayerCompression::kGzip));  // umoci 0.4.7 cannot read zstd layers
  spec.layers.push_back(layer(
      {
          file("etc/passwd", "replaced\n"),
          file("lnk/viaparent", "through a symlinked parent"),
          dir("willbedir/deeper"),
          file("willbedir/deeper/y", std::string(70000, 'y')),
      },
      LayerCompression::kNone));
  return spec;
}

TEST(UmociCompare, SamePathForPath) {
  if (::geteuid() != 0) GTEST_SKIP() << "umoci unpack needs root to keep owners and devices";
  if (find_program("umoci").empty()) GTEST_SKIP() << "umoci not installed";
  TempDir tmp("img2vm-umoci-cmp");
  BuiltImage img = build_image(semantics_image());

  rootfs::ImageInput in = image_input(img, tmp.path() / "in");
  rootfs::ConvertOptions opt;
  opt.output = tmp.path() / "rootfs.ext4";
  rootfs::convert(in, opt);
  std::string log;
  ASSERT_EQ(e2fsck(opt.output, &log), 0) << log;
  FsTree ours = read_ext4(opt.output);

  write_oci_layout(tmp.path() / "layout", {{"test", img}});
  CommandResult r =
      run_command({"umoci", "unpack", "--image", (tmp.path() / "layout").string() + ":test",
                   (tmp.path() / "bundle").string()});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  FsTree theirs = read_host_tree(tmp.path() / "bundle" / "rootfs");

  // Ours adds /.img2vm (and /lost+found, as mkfs does); nothing else may differ.
  for (auto it = ours.begin(); it != ours.end();) {
    if (it->first == "/lost+found" || it->first == "/.img2vm" ||
        it->first.rfind("/.img2vm/", 0) == 0)
      it = ours.erase(it);
    else
      ++it;
  }
  std::vector<std::string> only_ours, only_theirs;
  for (const auto& [p, e] : ours)
    if (!theirs.count(p)) only_ours.push_back(p);
  for (const auto& [p, e] : theirs)
    if (!ours.count(p)) only_theirs.push_back(p);
  EXPECT_TRUE(only_ours.empty()) << "only in ours: " << ::testing::PrintToString(only_ours);
  EXPECT_TRUE(only_theirs.empty()) << "only in umoci's: " << ::testing::PrintToString(only_theirs);
  ASSERT_GT(ours.size(), 30u);

  for (const auto& [p, a] : ours) {
    auto it = theirs.find(p);
    if (it == theirs.end()) continue;
    const FsEntry& b = it->second;
    SCOPED_TRACE(p);
    EXPECT_EQ(a.type, b.type);
    EXPECT_EQ(a.mode, b.mode);
    EXPECT_EQ(a.uid, b.uid);
    EXPECT_EQ(a.gid, b.gid);
    if (a.type == 'f') {
      EXPECT_EQ(a.size, b.size);
      EXPECT_TRUE(a.content == b.content);
    }
    EXPECT_EQ(a.target, b.target);
    EXPECT_EQ(a.major, b.major);
    EXPECT_EQ(a.minor, b.minor);
    EXPECT_EQ(a.xattrs, b.xattrs);
    if (p != "/") {  // umoci's rootfs directory itself is made at unpack time
      EXPECT_EQ(a.mtime, b.mtime);
      EXPECT_EQ(a.mtime_nsec, b.mtime_nsec);
    }
  }
  EXPECT_EQ(hardlink_groups(ours), hardlink_groups(theirs));
  // And the semantics themselves, not only agreement.
  EXPECT_FALSE(ours.count("/gone"));
  EXPECT_FALSE(ours.count("/opq/a"));
  EXPECT_FALSE(ours.count("/opq/sub"));
  EXPECT_EQ(ours["/opq/new"].content, "new");
  EXPECT_EQ(ours["/willbedir"].type, 'd');
  EXPECT_EQ(ours["/willbefile"].type, 'f');
  EXPECT_FALSE(ours.count("/willbefile/child"));
  EXPECT_EQ(ours["/usr/viaparent"].content, "through a symlinked parent");
  EXPECT_EQ(ours["/etc/link-to-lower"].content, "root:x:0:0::/root:/bin/sh\n");
  EXPECT_EQ(ours["/etc/passwd"].content, "replaced\n");
  EXPECT_EQ(ours["/etc"].mode, 0750u);
  EXPECT_EQ((std::vector<std::vector<std::string>>{{"/usr/bin/b", "/usr/bin/c"}}),
            hardlink_groups(ours));
  EXPECT_EQ(ours["/usr/bin/b"].nlink, 2u);
  EXPECT_EQ(ours["/dev/big"].major, 300u);
  EXPECT_EQ(ours["/dev/big"].minor, 70000u);
  EXPECT_EQ(ours["/home/user/f"].uid, 70000u);
  EXPECT_EQ(ours["/home/user/f"].gid, 80000u);
  EXPECT_EQ(ours["/usr/bin/su"].mode, 04711u);
  EXPECT_EQ(ours["/tmp"].mode, 01777u);
  EXPECT_EQ(ours["/opt/longlink"].target, "/" + std::string(200, 'x'));
}

}  // namespace
