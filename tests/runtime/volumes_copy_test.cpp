// VolumeStore::use() on a rootfs converted by our writer from a real layer tar: a volume's first
// use copies the image's content at the mount point in, later uses keep what is there, nocopy
// and a missing path leave it empty (docker's behaviour).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "fs_snapshot.hpp"
#include "image_builder.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/rootfs/convert.hpp"
#include "img2vm/runtime/volumes.hpp"

namespace img2vm::runtime {
namespace {

namespace fs = std::filesystem;
using namespace img2vm::testing;

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class VolumeCopy : public ::testing::Test {
 protected:
  TempDir tmp{"img2vm-volume-copy-test"};
  VolumeStore vs{tmp.path() / "volumes"};
  fs::path rootfs = tmp.path() / "rootfs.ext4";

  void SetUp() override {
    ImageSpec spec;
    spec.layers.push_back(layer(
        {dir("var/lib/app", 0750).owner(70, 70), file("var/lib/app/seed", "from the image\n")}));
    rootfs::ConvertOptions opt;
    opt.output = rootfs;
    rootfs::convert(image_input(build_image(spec), tmp.path() / "in"), opt);
  }
};

TEST_F(VolumeCopy, FirstUseCopiesTheImageContentLaterUsesKeepTheVolumes) {
  fs::path data;
  {
    VolumeLease l = vs.use("app", rootfs, "/var/lib/app", true);
    EXPECT_TRUE(l.copied);
    data = l.volume.mountpoint;
    EXPECT_EQ(slurp(data / "seed"), "from the image\n");
    EXPECT_EQ(fs::status(data).permissions() & fs::perms::all,
              fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
    std::ofstream(data / "seed") << "changed in a run\n";
  }
  VolumeLease again = vs.use("app", rootfs, "/var/lib/app", true);
  EXPECT_FALSE(again.copied);
  EXPECT_EQ(slurp(data / "seed"), "changed in a run\n");
  // Only directory entries left of the copy: no temporary directory beside _data.
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(data.parent_path()))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"_data", "volume.json"}));
}

TEST_F(VolumeCopy, NocopyAndMissingPathsLeaveTheVolumeEmpty) {
  VolumeLease nocopy = vs.use("nc", rootfs, "/var/lib/app", false);
  EXPECT_FALSE(nocopy.copied);
  EXPECT_TRUE(fs::is_empty(nocopy.volume.mountpoint));
  VolumeLease missing = vs.use("", rootfs, "/not/in/image", true);
  EXPECT_FALSE(missing.copied);
  EXPECT_TRUE(fs::is_empty(missing.volume.mountpoint));
  EXPECT_TRUE(missing.volume.anonymous);
}

TEST_F(VolumeCopy, AnEmptiedVolumeIsFilledAgain) {
  fs::path data;
  {
    VolumeLease l = vs.use("app", rootfs, "/var/lib/app", true);
    data = l.volume.mountpoint;
    fs::remove(data / "seed");
  }
  EXPECT_TRUE(vs.use("app", rootfs, "/var/lib/app", true).copied);  // docker: empty is copied into
  EXPECT_EQ(slurp(data / "seed"), "from the image\n");
}

}  // namespace
}  // namespace img2vm::runtime
