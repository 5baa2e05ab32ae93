// The ext4 writer (internal ext4_writer.hpp) on trees no layer could make: the apply step limits
// paths to PATH_MAX (so depth to 2047), the writer must not rely on it. Checked with e2fsck -fn
// and read back through libext2fs.
#include "ext4_writer.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>

#include "fs_snapshot.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "small_stack.hpp"

using namespace img2vm;
using namespace img2vm::testing;
using img2vm::layers::Dentry;
using img2vm::layers::Inode;
using img2vm::layers::NodeType;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<Inode> node(NodeType t, uint32_t mode = 0755) {
  auto n = std::make_shared<Inode>();
  n->type = t;
  n->mode = mode;
  return n;
}

// Writes `tree` (file data from `spool`, spool index 1) to dir/name on a thread with a
// `stack`-byte stack; returns the image's path.
fs::path write(const layers::Tree& tree, int spool, const fs::path& dir, size_t stack,
               rootfs::detail::Ext4Params p = {}) {
  fs::path out = dir / "out.ext4";
  UniqueFd fd = open_file(out, O_RDWR | O_CREAT | O_TRUNC, 0644);
  p.timestamp = 1700000000;
  run_with_stack(stack, [&] {
    rootfs::detail::write_ext4(
        out, fd.get(), tree,
        [&](uint32_t) {
          return rootfs::detail::SpoolRef{spool, 0};
        },
        p);
  });
  return out;
}

TEST(Ext4Writer, DeepTreesAreWrittenWithoutRecursion) {
  // 6,000 nested directories (a recursive writer needs some 450 bytes of stack per level) on a
  // 512 KiB stack, with a file, a symlink and a hard link at the bottom and siblings on the way.
  TempDir tmp("img2vm-ext4-writer-test");
  UniqueFd spool = open_file(tmp.path() / "spool", O_RDWR | O_CREAT, 0600);
  write_all(spool.get(), "deep data", "spool");
  layers::Tree tree;
  Inode* cur = tree.root.get();
  std::string path;
  constexpr int kDepth = 6000;
  for (int i = 0; i < kDepth; ++i) {
    auto d = node(NodeType::kDir, i % 2 ? 0750 : 0755);
    cur->children["d"] = Dentry{d, 1};
    if (i % 1000 == 0)
      cur->children["side" + std::to_string(i)] = Dentry{node(NodeType::kFifo, 0644), 1};
    cur = d.get();
    path += "/d";
  }
  auto f = node(NodeType::kFile, 0644);
  f->size = 9;
  f->extents.push_back({0, 9, 0});
  f->spool = 1;
  cur->children["file"] = Dentry{f, 1};
  cur->children["hard"] = Dentry{f, 1};
  auto l = node(NodeType::kSymlink, 0777);
  l->link_target = "file";
  cur->children["link"] = Dentry{l, 1};

  fs::path img = write(tree, spool.get(), tmp.path(), 512 << 10);
  std::string log;
  EXPECT_EQ(e2fsck(img, &log), 0) << log;
  FsTree t = read_ext4(img);
  ASSERT_TRUE(t.count(path + "/file"));
  EXPECT_EQ(t[path + "/file"].content, "deep data");
  EXPECT_EQ(t[path + "/file"].nlink, 2u);
  EXPECT_EQ(t[path + "/hard"].ino, t[path + "/file"].ino);
  EXPECT_EQ(t[path + "/link"].target, "file");
  EXPECT_EQ(t["/d"].mode, 0755u);
  EXPECT_EQ(t["/d/d"].mode, 0750u);
  EXPECT_EQ(t["/side0"].type, 'p');
  EXPECT_EQ(t[path.substr(0, 2 * 5000) + "/side5000"].type, 'p');
  EXPECT_EQ(t["/d"].nlink, 3u);  // ".", its name and the ".." of /d/d
  EXPECT_EQ(t["/lost+found"].type, 'd');
  run_with_stack(512 << 10, [&] { tree = layers::Tree(); });  // and released without recursion
}

TEST(Ext4Writer, ErrorsNameTheDirectoryDeepInTheTree) {
  // Directory paths are made only for messages: the one at fault is named in full.
  TempDir tmp("img2vm-ext4-writer-test");
  UniqueFd spool = open_file(tmp.path() / "spool", O_RDWR | O_CREAT, 0600);
  layers::Tree tree;
  auto a = node(NodeType::kDir), b = node(NodeType::kDir);
  tree.root->children["a"] = Dentry{a, 1};
  a->children["b"] = Dentry{b, 1};
  a->children["fine"] = Dentry{node(NodeType::kFifo), 1};
  b->children[std::string(256, 'n')] = Dentry{node(NodeType::kFifo), 1};
  try {
    write(tree, spool.get(), tmp.path(), 8 << 20);
    FAIL() << "a 256-byte name was written";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported) << e.what();
    EXPECT_NE(std::string(e.what()).find("directory \"/a/b\""), std::string::npos) << e.what();
  }
}

TEST(Ext4Writer, DeviceNumbersPastLinuxsAreRefused) {
  // 12 bits of major, 20 of minor: the largest are kept, one more would be written as another
  // device (the inode's encoding shifts the major into the minor's high bits).
  TempDir tmp("img2vm-ext4-writer-test");
  UniqueFd spool = open_file(tmp.path() / "spool", O_RDWR | O_CREAT, 0600);
  layers::Tree tree;
  auto dev = [](NodeType t, uint32_t ma, uint32_t mi) {
    auto n = node(t, 0660);
    n->dev_major = ma;
    n->dev_minor = mi;
    return n;
  };
  tree.root->children["max"] = Dentry{dev(NodeType::kCharDev, 4095, 1048575), 1};
  tree.root->children["old"] = Dentry{dev(NodeType::kBlockDev, 8, 1), 1};
  FsTree t = read_ext4(write(tree, spool.get(), tmp.path(), 8 << 20));
  EXPECT_EQ(t["/max"].major, 4095u);
  EXPECT_EQ(t["/max"].minor, 1048575u);
  EXPECT_EQ(t["/old"].type, 'b');
  EXPECT_EQ(t["/old"].minor, 1u);
  for (auto [ma, mi] : {std::pair<uint32_t, uint32_t>{4096, 1}, {1, 1048576}}) {
    tree.root->children["big"] = Dentry{dev(NodeType::kCharDev, ma, mi), 1};
    try {
      write(tree, spool.get(), tmp.path(), 8 << 20);
      ADD_FAILURE() << ma << ":" << mi << " was written";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnsupported) << e.what();
      EXPECT_NE(std::string(e.what()).find("\"big\""), std::string::npos) << e.what();
    }
  }
}

TEST(Ext4Writer, ExactSizesTooSmallForTheMetadataAreALimit) {
  // libext2fs refuses to lay these out at all (too few blocks for the inode tables, or more
  // inodes than the blocks can have): the caller's size is too small, not an I/O error.
  TempDir tmp("img2vm-ext4-writer-test");
  UniqueFd spool = open_file(tmp.path() / "spool", O_RDWR | O_CREAT, 0600);
  layers::Tree tree;
  for (auto [size, inodes] : {std::pair<uint64_t, uint64_t>{4096, 60000}, {64 * 4096, 60000}}) {
    rootfs::detail::Ext4Params p;
    p.size = size;
    p.extra_inodes = inodes;
    try {
      write(tree, spool.get(), tmp.path(), 8 << 20, p);
      ADD_FAILURE() << size << " bytes for " << inodes << " inodes were written";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kLimit) << e.what();
      EXPECT_NE(std::string(e.what()).find("too small"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
