#include "nested_rig.hpp"

#include <gtest/gtest.h>

using namespace img2vm::testing;

// The rig itself: L1 boots, has /dev/kvm, runs the command and passes its status and output.
TEST(NestedRig, RunsCommandWithKvmAndPassesStatus) {
  auto r = run_nested({"sh", "-c", "test -c /dev/kvm && echo kvm-ok; echo on stderr >&2; exit 3"},
                      {}, std::chrono::seconds(180));
  EXPECT_EQ(r.exit_code, 3) << r.describe();
  EXPECT_NE(r.output.find("kvm-ok"), std::string::npos) << r.describe();
  EXPECT_NE(r.output.find("on stderr"), std::string::npos) << r.describe();
}

TEST(NestedRig, CopiesDynamicExecutablesWithTheirLibraries) {
  // /usr/bin/od is dynamically linked: it only runs in L1 if its libraries came along.
  auto r = run_nested({"/usr/bin/od", "-An", "-tx1", "-N4", "/usr/bin/od"}, {"/usr/bin/od"},
                      std::chrono::seconds(180));
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.output.find("7f 45 4c 46"), std::string::npos) << r.describe();
}

TEST(NestedRig, ReportsTimeout) {
  auto r = run_nested({"sleep", "600"}, {}, std::chrono::seconds(20));
  EXPECT_TRUE(r.timed_out) << r.describe();
  EXPECT_EQ(r.exit_code, 202) << r.describe();
}
