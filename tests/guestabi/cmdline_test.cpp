// The kernel command line of an img2vm rootfs and the img2vm.run= parameter: built by the host,
// read back by the init.
#include "img2vm/guestabi/cmdline.hpp"

#include <gtest/gtest.h>

#include "img2vm/guestabi/error.hpp"
#include "img2vm/guestabi/paths.hpp"

using namespace img2vm::guestabi;

namespace {

std::string error_of(std::string_view value) {
  try {
    decode_inline_run_param(value);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(GuestCmdline, ImageCommandLine) {
  const std::string quiet = image_cmdline(false);
  EXPECT_EQ(quiet.rfind("console=ttyS0 quiet ", 0), 0u) << quiet;
  for (const char* w : {" root=/dev/vda rw ", " init=/.img2vm/init ", " reboot=k ", " panic=-1 "})
    EXPECT_NE(quiet.find(w), std::string::npos) << w;
  EXPECT_EQ(kernel_param(quiet, "init"), std::string(kInitPath));
  EXPECT_NE(quiet.back(), ' ');
  const std::string loud = image_cmdline(true, "img2vm.run=abc");
  EXPECT_EQ(loud.find("quiet"), std::string::npos);
  EXPECT_NE(loud.find(" loglevel=7 "), std::string::npos);
  EXPECT_EQ(loud.substr(loud.size() - 15), " img2vm.run=abc");
}

TEST(GuestCmdline, KernelCommandLineWords) {
  EXPECT_EQ(kernel_param("a=1 img2vm.run=first b img2vm.run=last", "img2vm.run"), "last");
  EXPECT_EQ(kernel_param("x=\"quoted value\" y", "x"), "quoted value");
  EXPECT_EQ(kernel_param("img2vm.running=no img2vm.run", "img2vm.run"), std::nullopt);
  EXPECT_EQ(kernel_param("a -- img2vm.run=afterdashes", "img2vm.run"), std::nullopt);
  EXPECT_EQ(kernel_param("", "img2vm.run"), std::nullopt);
}

TEST(GuestCmdline, InlineOverridesRoundTrip) {
  RunOverrides o;
  o.cmd = std::vector<std::string>{"echo", "x y"};
  o.env = {"A=\"quoted\" and spaced"};
  std::string param = run_overrides_kernel_param(o);
  ASSERT_TRUE(param.starts_with("img2vm.run="));
  EXPECT_EQ(param.find_first_of(" \"\t\n"), std::string::npos);
  auto value = kernel_param(image_cmdline(false, param) + " virtio_mmio.device=4K@0xd0000000:5\n",
                            kRunParam);
  ASSERT_TRUE(value);
  EXPECT_EQ(decode_inline_run_param(*value), o);
}

TEST(GuestCmdline, DiskParam) {
  std::string param = run_overrides_disk_param("/dev/vdc");
  EXPECT_EQ(param, "img2vm.run=blk:/dev/vdc");
  auto value = kernel_param(image_cmdline(false, param), kRunParam);
  ASSERT_TRUE(value);
  EXPECT_TRUE(value->starts_with(kRunParamDiskPrefix));
}

TEST(GuestCmdline, InlineErrorsNameTheParameter) {
  std::string e = error_of("!!!");
  EXPECT_NE(e.find("kernel parameter img2vm.run"), std::string::npos) << e;
  EXPECT_NE(e.find("base64url"), std::string::npos) << e;
  e = error_of(base64url_encode(R"({"schema":2})"));
  EXPECT_NE(e.find("kernel parameter img2vm.run"), std::string::npos) << e;
  EXPECT_NE(e.find("version 2"), std::string::npos) << e;
}

// Snapshots (issue #19): img2vm.snapshot=1 asks the init to stop at the snapshot point.
TEST(GuestCmdline, SnapshotParam) {
  EXPECT_EQ(snapshot_param(), "img2vm.snapshot=1");
  EXPECT_TRUE(snapshot_requested(image_cmdline(false, snapshot_param())));
  EXPECT_FALSE(snapshot_requested(image_cmdline(false)));
  EXPECT_FALSE(snapshot_requested("quiet img2vm.snapshot=1 img2vm.snapshot=0"));  // the last wins
  EXPECT_FALSE(snapshot_requested("quiet -- img2vm.snapshot=1"));                 // init's argv
  std::string e = "(no error)";
  try {
    snapshot_requested("quiet img2vm.snapshot=yes");
  } catch (const Error& err) {
    e = err.what();
  }
  EXPECT_EQ(e, "kernel parameter img2vm.snapshot: \"yes\" is not 1 or 0");
}

// run --rootfs: the init comes from the initramfs (rdinit=), there is no root disk, and the root
// share's tag (and read-only) survives the trip through the command line.
TEST(GuestCmdline, RootShareRoundTrip) {
  for (const RootShare& r : {RootShare{"img2vm-root", false}, RootShare{"x", true}}) {
    const std::string line = directory_cmdline(false, r, "img2vm.run=abc");
    EXPECT_EQ(line.find("root=/dev/vda"), std::string::npos) << line;
    EXPECT_EQ(line.find(" init="), std::string::npos) << line;
    EXPECT_EQ(kernel_param(line, "rdinit"), std::string(kInitPath)) << line;
    auto value = kernel_param(line, kRootParam);
    ASSERT_TRUE(value) << line;
    EXPECT_EQ(parse_root_share(*value), r) << line;
    EXPECT_EQ(kernel_param(line, kRunParam), "abc");
  }
  EXPECT_EQ(root_share_param({"t", true}), "img2vm.root=t,ro");
  EXPECT_EQ(root_share_param({"t", false}), "img2vm.root=t");
}

TEST(GuestCmdline, BadRootSharesAreRefused) {
  const std::string too_long(kMaxFsTag + 1, 'a');
  for (const std::string& bad :
       std::vector<std::string>{"", ",ro", "t,rw", "t,ro,ro", "a b", "t,", "a\"b", too_long})
    try {
      parse_root_share(bad);
      ADD_FAILURE() << "accepted \"" << bad << "\"";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("img2vm.root"), std::string::npos) << e.what();
    }
  for (const char* bad : {"", "a,b", "a b", "a\tb", "\"a\""})
    EXPECT_THROW(root_share_param({bad, false}), Error) << bad;
}
