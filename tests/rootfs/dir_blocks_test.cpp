// The directory block planner of the ext4 writer (internal dir_blocks.hpp): when a directory
// becomes an htree, how many index levels and blocks it gets, and its limits. Small 1 KiB blocks
// keep the two-level limit within reach; convert tests check real 4 KiB file systems.
#include "dir_blocks.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "img2vm/base/error.hpp"

using namespace img2vm;
using namespace img2vm::rootfs::detail;

namespace {

DirFormat small_blocks(bool csum = true) {
  DirFormat f;
  f.block_size = 1024;
  f.metadata_csum = csum;
  f.hash_seed = {0x01234567, 0x89abcdef, 0x02468ace, 0x13579bdf};
  return f;
}

// `n` distinct names of `len` bytes (rec_len len + 8 rounded up to 4).
std::vector<std::string> names(size_t n, size_t len) {
  std::vector<std::string> v;
  for (size_t i = 0; i < n; ++i) {
    std::string s = std::to_string(i) + "-";
    s.resize(len, 'x');
    v.push_back(s);
  }
  return v;
}

std::vector<DirEntry> entries(const std::vector<std::string>& ns) {
  std::vector<DirEntry> v;
  for (size_t i = 0; i < ns.size(); ++i)
    v.push_back({ns[i], static_cast<uint32_t>(100 + i), EXT2_FT_REG_FILE});
  return v;
}

// With 1 KiB blocks and checksums: 1012 usable bytes per leaf, filled up to 810; 200-byte names
// (208-byte records) go 3 to a leaf. The dx_root points at 123 blocks, a dx_node at 126.
constexpr size_t kPerLeaf = 3, kRootLimit = 123, kNodeLimit = 126;

TEST(DirBlocks, OneBlockStaysLinear) {
  // 24 bytes of "." and "..", then 1012 - 24 = 988 bytes: 4 records of 208 fit, 5 do not.
  auto ns = names(4, 200);
  DirPlan p = plan_dir(entries(ns), small_blocks());
  EXPECT_FALSE(p.indexed);
  EXPECT_EQ(p.blocks(), 1u);
  auto ns5 = names(5, 200);
  DirPlan p5 = plan_dir(entries(ns5), small_blocks());
  EXPECT_TRUE(p5.indexed);
  EXPECT_EQ(p5.indirect_levels, 0u);
  EXPECT_EQ(p5.index_blocks, 1u);
  EXPECT_EQ(p5.leaf_blocks, 2u);  // 3 + 2 records
}

TEST(DirBlocks, WithoutDirIndexLargeDirectoriesStayLinear) {
  DirFormat f = small_blocks();
  f.dir_index = false;
  auto ns = names(40, 200);
  DirPlan p = plan_dir(entries(ns), f);
  EXPECT_FALSE(p.indexed);
  EXPECT_EQ(p.blocks(), 10u);  // ".", ".." and 4 records, then 4 per block
}

TEST(DirBlocks, SecondLevelWhenTheRootIsFull) {
  auto full = names(kRootLimit * kPerLeaf, 200);
  DirPlan p = plan_dir(entries(full), small_blocks());
  EXPECT_EQ(p.indirect_levels, 0u);
  EXPECT_EQ(p.leaf_blocks, kRootLimit);
  EXPECT_EQ(p.index_blocks, 1u);

  auto more = names(kRootLimit * kPerLeaf + 1, 200);
  DirPlan q = plan_dir(entries(more), small_blocks());
  EXPECT_EQ(q.indirect_levels, 1u);
  EXPECT_EQ(q.leaf_blocks, kRootLimit + 1);
  EXPECT_EQ(q.index_blocks, 1u + 1);  // root + one dx_node

  // Without checksums the root has room for one more dx_entry.
  DirPlan r = plan_dir(entries(more), small_blocks(false));
  EXPECT_EQ(r.indirect_levels, 0u);
}

TEST(DirBlocks, BuildMatchesPlanAndIndexesEveryLeaf) {
  auto ns = names(kRootLimit * kPerLeaf * 3, 200);
  DirFormat f = small_blocks();
  DirPlan p = plan_dir(entries(ns), f);
  DirBlocks b = build_dir(entries(ns), 12, 2, f);
  EXPECT_EQ(b.plan.blocks(), p.blocks());
  EXPECT_EQ(b.data.size(), p.blocks() * f.block_size);
  ASSERT_EQ(b.plan.indirect_levels, 1u);
  const uint64_t nodes = b.plan.index_blocks - 1;
  EXPECT_EQ(nodes, (b.plan.leaf_blocks + kNodeLimit - 1) / kNodeLimit);
  // Root: ".", "..", dx_root_info, then count/limit.
  const char* root = b.data.data();
  struct ext2_dx_root_info info;
  std::memcpy(&info, root + 24, sizeof info);
  EXPECT_EQ(info.info_length, 8);
  EXPECT_EQ(info.indirect_levels, 1);
  EXPECT_EQ(info.hash_version, EXT2_HASH_HALF_MD4);
  struct ext2_dx_countlimit cl;
  std::memcpy(&cl, root + 32, sizeof cl);
  EXPECT_EQ(cl.limit, kRootLimit);
  EXPECT_EQ(cl.count, nodes);
  // Each node's entries, summed, point at every leaf once, in block order.
  uint64_t next_leaf = b.plan.index_blocks;
  for (uint64_t k = 0; k < nodes; ++k) {
    const char* blk = b.data.data() + (1 + k) * f.block_size;
    std::memcpy(&cl, blk + 8, sizeof cl);
    EXPECT_EQ(cl.limit, kNodeLimit);
    ASSERT_GT(cl.count, 0);
    for (unsigned i = 0; i < cl.count; ++i) {
      struct ext2_dx_entry e;
      std::memcpy(&e, blk + 8 + i * sizeof e, sizeof e);
      EXPECT_EQ(e.block, next_leaf++);
    }
  }
  EXPECT_EQ(next_leaf, b.plan.blocks());
}

// plan_dir refuses the entries with kUnsupported, saying `why`.
void expect_unsupported(const std::vector<std::string>& ns, const std::string& why) {
  try {
    plan_dir(entries(ns), small_blocks());
    ADD_FAILURE() << "planned a directory that should be refused: " << why;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
  }
}

TEST(DirBlocks, MoreThanTwoLevelsIsAnError) {
  auto ok = names(kRootLimit * kNodeLimit * kPerLeaf, 200);
  EXPECT_EQ(plan_dir(entries(ok), small_blocks()).indirect_levels, 1u);
  ok.push_back(std::string(200, 'y'));
  expect_unsupported(ok, "two-level htree");
}

TEST(DirBlocks, NameLongerThan255BytesIsAnError) {
  expect_unsupported({"ok", std::string(256, 'n')}, "longer than 255");
}

}  // namespace
