#include "img2vm/vm/kvm_detect.hpp"

#include <gtest/gtest.h>

#include <filesystem>

#include "img2vm/base/fd.hpp"

using namespace img2vm;
using namespace img2vm::vm;

TEST(KvmDetect, MissingDeviceIsUnavailableWithReason) {
  TempDir sys("sysmod");
  std::filesystem::create_directories(sys.path() / "kvm_pvm");
  auto info = detect_kvm((sys.path() / "no-kvm").string(), sys.path().string());
  EXPECT_EQ(info.kind, KvmKind::kUnavailable);
  EXPECT_EQ(info.module, "kvm_pvm");
  EXPECT_NE(info.detail.find("No such file"), std::string::npos) << info.detail;
  EXPECT_NE(info.detail.find("kvm_pvm"), std::string::npos) << info.detail;
}

TEST(KvmDetect, NonKvmDeviceIsRejected) {
  // /dev/null opens but does not answer KVM_GET_API_VERSION.
  TempDir sys("sysmod");
  std::filesystem::create_directories(sys.path() / "kvm_amd");
  auto info = detect_kvm("/dev/null", sys.path().string());
  EXPECT_EQ(info.kind, KvmKind::kUnavailable);
  EXPECT_NE(info.detail.find("API version"), std::string::npos) << info.detail;
}

TEST(KvmDetect, ThisHost) {
  auto info = detect_kvm();
  // Whatever the host offers, the answer must be self-consistent and explained.
  EXPECT_FALSE(info.detail.empty());
  if (info.kind == KvmKind::kUnavailable) {
    EXPECT_NE(info.api_version, 12);
  } else {
    EXPECT_EQ(info.api_version, 12);
  }
  if (std::filesystem::exists("/sys/module/kvm_pvm")) {
    EXPECT_EQ(info.module, "kvm_pvm");
  }
}
