// Disk views: the copy-on-write overlay against a byte-for-byte model under random unaligned
// I/O, views that must leave their image untouched, read-only refusal, and clone_file's sparse,
// atomic copy.
#include "img2vm/vm/disk_view.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "img2vm/base/digest.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "virtio_blk.hpp"

using namespace img2vm;
using namespace img2vm::vm;
namespace fs = std::filesystem;

namespace {

std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = uint8_t(rng());
  return v;
}

void write_bytes(const fs::path& p, const std::vector<uint8_t>& data) {
  write_file_atomic(p, std::string_view(reinterpret_cast<const char*>(data.data()), data.size()));
}

std::vector<uint8_t> read_view(DiskView& v) {
  std::vector<uint8_t> out(v.size());
  EXPECT_TRUE(v.read(out.data(), out.size(), 0));
  return out;
}

}  // namespace

TEST(DiskView, OverlayMatchesAModelUnderRandomUnalignedIo) {
  constexpr size_t kSize = 64 * 1024 + 512;  // not a multiple of 4 KiB on purpose
  std::vector<uint8_t> base = pattern(kSize, 1), model = base;
  int bfd = ::memfd_create("base", MFD_CLOEXEC), ofd = ::memfd_create("overlay", MFD_CLOEXEC);
  ASSERT_GE(bfd, 0);
  ASSERT_GE(ofd, 0);
  ASSERT_EQ(::pwrite(bfd, base.data(), base.size(), 0), ssize_t(base.size()));
  int bfd_check = ::dup(bfd);
  auto view = overlay_disk_view(bfd, ofd, kSize);
  EXPECT_EQ(view->kind(), "overlay");
  EXPECT_FALSE(view->read_only());
  EXPECT_EQ(read_view(*view), base);

  std::mt19937 rng(7);
  for (int i = 0; i < 2000; ++i) {
    size_t off = rng() % kSize, len = 1 + rng() % std::min<size_t>(3000, kSize - off);
    if (rng() % 2) {
      std::vector<uint8_t> data = pattern(len, uint32_t(i + 100));
      ASSERT_TRUE(view->write(data.data(), len, off));
      std::memcpy(model.data() + off, data.data(), len);
    } else {
      std::vector<uint8_t> got(len);
      ASSERT_TRUE(view->read(got.data(), len, off));
      ASSERT_EQ(0, std::memcmp(got.data(), model.data() + off, len))
          << "read " << off << "+" << len;
    }
  }
  EXPECT_EQ(read_view(*view), model);
  EXPECT_TRUE(view->flush());
  std::vector<uint8_t> after(kSize);
  ASSERT_EQ(::pread(bfd_check, after.data(), kSize, 0), ssize_t(kSize));
  EXPECT_EQ(after, base) << "the base image changed";
  ::close(bfd_check);
}

TEST(DiskView, CopyOnWriteViewsAreIndependentAndLeaveTheImageAlone) {
  TempDir dir("img2vm-disk-view");
  fs::path img = dir.path() / "root.ext4";
  std::vector<uint8_t> base = pattern(1 << 20, 2);
  write_bytes(img, base);
  std::string before = sha256_file(img).str();

  auto a = open_disk_view(img, DiskMode::kCopyOnWrite);
  auto b = open_disk_view(img, DiskMode::kCopyOnWrite);
  EXPECT_TRUE(a->kind() == "reflink" || a->kind() == "overlay") << a->kind();
  EXPECT_EQ(a->size(), base.size());
  std::vector<uint8_t> x(4096, 0xaa), y(700, 0x55);
  ASSERT_TRUE(a->write(x.data(), x.size(), 8192));
  ASSERT_TRUE(b->write(y.data(), y.size(), 8192 + 100));
  ASSERT_TRUE(a->flush());

  std::vector<uint8_t> ga = read_view(*a), gb = read_view(*b);
  std::vector<uint8_t> ma = base, mb = base;
  std::memcpy(ma.data() + 8192, x.data(), x.size());
  std::memcpy(mb.data() + 8192 + 100, y.data(), y.size());
  EXPECT_EQ(ga, ma);
  EXPECT_EQ(gb, mb);
  EXPECT_EQ(sha256_file(img).str(), before);
  // The views' storage is unlinked: nothing is left beside the image.
  size_t entries = 0;
  for (auto& e : fs::directory_iterator(dir.path())) entries += e.path() != img;
  EXPECT_EQ(entries, 0u);
}

TEST(DiskView, OverlayGoesToTheScratchDirectoryWhenGiven) {
  TempDir dir("img2vm-disk-view");
  fs::path img = dir.path() / "root.ext4";
  write_bytes(img, pattern(64 * 1024, 3));
  TempDir scratch("img2vm-disk-scratch");
  auto v = open_disk_view(img, DiskMode::kCopyOnWrite, scratch.path());
  std::vector<uint8_t> x(512, 1);
  EXPECT_TRUE(v->write(x.data(), x.size(), 0));
  EXPECT_THROW(open_disk_view(img, DiskMode::kCopyOnWrite, dir.path() / "missing"), Error);
}

TEST(DiskView, ReadOnlyRefusesWritesAndReadWriteWritesThrough) {
  TempDir dir("img2vm-disk-view");
  fs::path img = dir.path() / "d.img";
  write_bytes(img, pattern(8192, 4));
  auto ro = open_disk_view(img, DiskMode::kReadOnly);
  EXPECT_TRUE(ro->read_only());
  EXPECT_EQ(ro->kind(), "read-only");
  uint8_t b[512] = {};
  EXPECT_FALSE(ro->write(b, sizeof b, 0));
  auto rw = open_disk_view(img, DiskMode::kReadWrite);
  EXPECT_EQ(rw->kind(), "read-write");
  ASSERT_TRUE(rw->write(b, sizeof b, 512));
  ASSERT_TRUE(rw->flush());
  std::string data = read_file(img);
  EXPECT_EQ(data.substr(512, 512), std::string(512, '\0'));
  EXPECT_THROW(open_disk_view(dir.path() / "nope.img", DiskMode::kCopyOnWrite), Error);
  EXPECT_THROW(open_disk_view(dir.path(), DiskMode::kReadOnly), Error);  // a directory
}

TEST(DiskView, VirtioBlkReportsReadOnlyFromTheView) {
  TempDir dir("img2vm-disk-view");
  fs::path img = dir.path() / "d.img";
  write_bytes(img, pattern(8192 + 100, 5));
  VirtioBlk ro(open_disk_view(img, DiskMode::kReadOnly), "x");
  EXPECT_TRUE(ro.read_only());
  EXPECT_TRUE(ro.features() & VirtioBlk::kFeatureRo);
  EXPECT_EQ(ro.capacity_sectors(), 16u);  // rounded down to whole sectors
  VirtioBlk cow(open_disk_view(img, DiskMode::kCopyOnWrite), "y");
  EXPECT_FALSE(cow.read_only());
  EXPECT_FALSE(cow.features() & VirtioBlk::kFeatureRo);
}

TEST(CloneFile, KeepsContentAndHolesAndReplacesAtomically) {
  TempDir dir("img2vm-clone");
  fs::path src = dir.path() / "sparse.img", dst = dir.path() / "copy.img";
  {
    UniqueFd fd = open_file(src, O_RDWR | O_CREAT | O_TRUNC, 0644);
    ASSERT_EQ(::ftruncate(fd.get(), 64 << 20), 0);  // 64 MiB, nearly all hole
    std::vector<uint8_t> a = pattern(10000, 6), b = pattern(5000, 7);
    ASSERT_EQ(::pwrite(fd.get(), a.data(), a.size(), 1 << 20), ssize_t(a.size()));
    ASSERT_EQ(::pwrite(fd.get(), b.data(), b.size(), (64 << 20) - 5000), ssize_t(b.size()));
  }
  write_file_atomic(dst, "old contents");
  clone_file(src, dst);
  EXPECT_EQ(sha256_file(dst).str(), sha256_file(src).str());
  struct stat s {
  }, d{};
  ASSERT_EQ(::stat(src.c_str(), &s), 0);
  ASSERT_EQ(::stat(dst.c_str(), &d), 0);
  EXPECT_EQ(d.st_size, s.st_size);
  EXPECT_LT(uint64_t(d.st_blocks) * 512, uint64_t(4) << 20) << "the copy is not sparse";
  EXPECT_EQ(d.st_mode & 0777, 0644u);

  // A failed clone leaves the destination as it was and no temporary file behind.
  EXPECT_THROW(clone_file(dir.path() / "missing.img", dst), Error);
  EXPECT_EQ(sha256_file(dst).str(), sha256_file(src).str());
  size_t entries = 0;
  for (auto& e : fs::directory_iterator(dir.path())) (void)e, ++entries;
  EXPECT_EQ(entries, 2u);
}
