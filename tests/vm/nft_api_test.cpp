// libnftables is opened when a tap network is first set up (src/nft_api.hpp). Without a usable
// one, that step fails with one line naming the library, what it is for and why: this program
// runs itself again with a file that is no shared object found first as libnftables.so.1
// (LD_LIBRARY_PATH is read when a program starts).
#include "nft_api.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

namespace {

constexpr const char* kChildEnv = "IMG2VM_NFT_API_CHILD";

TEST(NftApi, LoadInChild) {
  if (!std::getenv(kChildEnv)) GTEST_SKIP() << "runs as the child of the test below";
  try {
    img2vm::vm::nft::api();
    std::printf("@@loaded@@\n");
  } catch (const img2vm::Error& e) {
    std::printf("@@error %d %s@@\n", int(e.kind()), e.what());
  }
}

TEST(NftApi, WithoutAUsableLibnftablesTheErrorSaysWhichLibraryAndWhy) {
  img2vm::TempDir dir("nft-api");
  img2vm::write_file_atomic(dir.path() / "libnftables.so.1", "not a shared object\n");
  const std::string cmd = std::string(kChildEnv) + "=1 LD_LIBRARY_PATH='" + dir.path().string() +
                          "' /proc/" + std::to_string(::getpid()) +
                          "/exe --gtest_filter=NftApi.LoadInChild 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  EXPECT_EQ(::pclose(p), 0) << out;
  EXPECT_NE(out.find("@@error " + std::to_string(int(img2vm::ErrorKind::kUnsupported)) +
                     " cannot load libnftables.so.1, needed for a tap network's nftables rules "
                     "(install libnftables1): "),
            std::string::npos)
      << out;
  EXPECT_EQ(out.find("@@loaded@@"), std::string::npos) << out;
}

}  // namespace
