// convert(): builder images flattened into ext4, read back through libext2fs, checked with
// e2fsck -fn every time.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "fs_snapshot.hpp"
#include "image_builder.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/rootfs/convert.hpp"
#include "img2vm/rootfs/runtime_config.hpp"

using namespace img2vm;
using namespace img2vm::testing;
namespace fs = std::filesystem;

namespace {

class Convert : public ::testing::Test {
 protected:
  TempDir tmp{"img2vm-convert-test"};

  // Converts, asserts e2fsck -fn is clean, returns the tree.
  FsTree convert_ok(const ImageSpec& spec, rootfs::ConvertOptions opt = {}, std::string name = "out.ext4") {
    BuiltImage img = build_image(spec);
    return convert_built(img, opt, name);
  }
  FsTree convert_built(const BuiltImage& img, rootfs::ConvertOptions opt = {}, std::string name = "out.ext4") {
    rootfs::ImageInput in = image_input(img, tmp.path() / ("in-" + name));
    opt.output = tmp.path() / name;
    rootfs::ConvertResult r = rootfs::convert(in, opt);
    EXPECT_EQ(r.size_bytes, fs::file_size(opt.output));
    std::string log;
    int rc = e2fsck(opt.output, &log);
    EXPECT_EQ(rc, 0) << log;
    return read_ext4(opt.output);
  }
};

TEST_F(Convert, BasicFilesDirsAndInjectedConfig) {
  ImageSpec spec;
  spec.layers.push_back(layer({dir("etc", 0755), file("etc/hostname", "box\n"), dir("var/empty", 0700),
                               symlink_to("bin", "usr/bin"), dir("usr/bin"), file("usr/bin/sh", "#!sh", 0755)}));
  spec.config.cmd = {"/bin/sh"};
  spec.config.env = {"PATH=/usr/bin"};
  FsTree t = convert_ok(spec);
  ASSERT_TRUE(t.count("/etc/hostname"));
  EXPECT_EQ(t["/etc/hostname"].type, 'f');
  EXPECT_EQ(t["/etc/hostname"].content, "box\n");
  EXPECT_EQ(t["/etc/hostname"].mode, 0644u);
  EXPECT_EQ(t["/etc/hostname"].mtime, 1700000000);
  EXPECT_EQ(t["/var/empty"].type, 'd');
  EXPECT_EQ(t["/var/empty"].mode, 0700u);
  EXPECT_EQ(t["/var"].mode, 0755u);  // implicit parent
  EXPECT_EQ(t["/bin"].type, 'l');
  EXPECT_EQ(t["/bin"].target, "usr/bin");
  EXPECT_EQ(t["/usr/bin/sh"].mode, 0755u);
  EXPECT_EQ(t["/.img2vm"].type, 'd');
  EXPECT_EQ(t["/.img2vm"].mode, 0755u);
  EXPECT_EQ(t["/.img2vm"].uid, 0u);
  rootfs::RuntimeConfig rc = rootfs::runtime_config_from_json(t["/.img2vm/config.json"].content);
  EXPECT_EQ(rc.cmd, std::vector<std::string>{"/bin/sh"});
  EXPECT_EQ(rc.env, std::vector<std::string>{"PATH=/usr/bin"});
  EXPECT_FALSE(t.count("/.img2vm/init"));
  EXPECT_EQ(t["/lost+found"].type, 'd');
}

}  // namespace
