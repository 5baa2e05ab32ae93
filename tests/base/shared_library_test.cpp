// SharedLibrary: a library opened on demand and its functions bound by name, or one line saying
// which library could not be loaded, for what, and why, or which function it lacks.
#include "img2vm/base/shared_library.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "img2vm/base/error.hpp"

namespace {

using img2vm::Error;
using img2vm::ErrorKind;
using img2vm::SharedLibrary;

TEST(SharedLibrary, BindsFunctionsByName) {
  const SharedLibrary libc("libc.so.6", "needed for nothing");
  decltype(&::getpid) pid = nullptr;
  libc.bind(pid, "getpid");
  ASSERT_NE(pid, nullptr);
  EXPECT_EQ(pid(), ::getpid());
}

TEST(SharedLibrary, AMissingLibraryOrFunctionIsOneClearError) {
  try {
    SharedLibrary("libimg2vm-none-such.so.1", "needed for the test (install nothing)");
    FAIL() << "a library that does not exist was opened";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("cannot load libimg2vm-none-such.so.1, needed for the test (install "
                      "nothing): ",
                      0),
              0u)
        << m;
    EXPECT_NE(m.find("No such file"), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
  const SharedLibrary libc("libc.so.6", "needed for nothing");
  decltype(&::getpid) f = nullptr;
  try {
    libc.bind(f, "img2vm_no_such_function", " (too old?)");
    FAIL() << "a function that does not exist was bound";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_STREQ(e.what(), "libc.so.6 has no img2vm_no_such_function (too old?)");
  }
  EXPECT_EQ(f, nullptr);
}

}  // namespace
