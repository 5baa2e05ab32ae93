#include "img2vm/base/fd.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "img2vm/base/error.hpp"

using namespace img2vm;
namespace fs = std::filesystem;

TEST(UniqueFd, ClosesOnDestructionAndMove) {
  int raw;
  {
    UniqueFd fd = open_file("/dev/null", O_RDONLY);
    raw = fd.get();
    ASSERT_GE(raw, 0);
    UniqueFd moved = std::move(fd);
    EXPECT_FALSE(fd);
    EXPECT_EQ(moved.get(), raw);
    EXPECT_NE(fcntl(raw, F_GETFD), -1);
  }
  EXPECT_EQ(fcntl(raw, F_GETFD), -1);
}

TEST(UniqueFd, OpenFailureNamesThePath) {
  try {
    open_file("/nonexistent/img2vm-test", O_RDONLY);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/img2vm-test"), std::string::npos);
  }
}

TEST(TempDir, RemovedWithContentsEvenReadOnly) {
  fs::path p;
  {
    TempDir d("tempdir-test");
    p = d.path();
    fs::create_directories(p / "a" / "b");
    write_file_atomic(p / "a" / "b" / "f", "x");
    fs::permissions(p / "a", fs::perms::owner_read | fs::perms::owner_exec);
    EXPECT_TRUE(fs::exists(p / "a" / "b" / "f"));
  }
  EXPECT_FALSE(fs::exists(p));
}

TEST(AtomicFile, UncommittedLeavesTargetUntouched) {
  TempDir d("atomic-test");
  auto target = d.path() / "out";
  write_file_atomic(target, "old");
  {
    AtomicFile f(target);
    f.write("new but abandoned");
    EXPECT_TRUE(fs::exists(f.temp_path()));
  }
  EXPECT_EQ(read_file(target), "old");
  // No temporary file is left behind.
  size_t n = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator(d.path())) ++n;
  EXPECT_EQ(n, 1u);
}

TEST(AtomicFile, CommitReplacesAndKeepsMode) {
  TempDir d("atomic-test");
  auto target = d.path() / "out";
  write_file_atomic(target, "old");
  write_file_atomic(target, "new", 0600);
  EXPECT_EQ(read_file(target), "new");
  struct stat st {};
  ASSERT_EQ(stat(target.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(CopyRange, CopiesAtOffsetsAndStopsAtTheEndOfTheSource) {
  TempDir dir("img2vm-fd-test");
  write_file_atomic(dir.path() / "in", "0123456789");
  UniqueFd in = open_file(dir.path() / "in", O_RDONLY);
  UniqueFd out = open_file(dir.path() / "out", O_RDWR | O_CREAT, 0600);
  pwrite_all(out.get(), "ab", 4, "out");
  EXPECT_EQ(copy_range(in.get(), 2, out.get(), 0, 3, "in"), 3u);    // "234"
  EXPECT_EQ(copy_range(in.get(), 8, out.get(), 6, 100, "in"), 2u);  // only "89" is left
  EXPECT_EQ(read_file(dir.path() / "out"), std::string("234\0ab89", 8));
  // From another file system (tmpfs): copy_file_range refuses (EXDEV), reads and writes copy.
  if (!fs::is_directory("/dev/shm")) return;
  TempDir shm("img2vm-fd-test", "/dev/shm");
  write_file_atomic(shm.path() / "in", "abcdef");
  UniqueFd in2 = open_file(shm.path() / "in", O_RDONLY);
  EXPECT_EQ(copy_range(in2.get(), 1, out.get(), 1, 10, "in2"), 5u);
  EXPECT_EQ(read_file(dir.path() / "out"), "2bcdef89");
}
