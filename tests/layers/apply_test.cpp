// Layer application on the metadata tree (no ext4, no external programs): path confinement,
// whiteout/opaque ordering within a layer, hardlink rules, replacement rules.
#include "img2vm/layers/apply.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>

#include "image_builder.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "small_stack.hpp"

using namespace img2vm;
using namespace img2vm::layers;
using namespace img2vm::testing;

namespace {

struct Applied {
  Tree tree;
  TempDir spool_dir{"img2vm-apply-test"};
  UniqueFd spool = open_file(spool_dir.path() / "spool", O_RDWR | O_CREAT, 0600);
  uint32_t layer = 0;

  void apply(const std::string& tar) {
    DecodedLayer d =
        decode_tar(bytes_source(tar), Compression::kNone, spool.get(), {}, "layer test");
    ++layer;
    apply_layer(tree, d, layer, 1, "layer test");
  }
  void apply(const std::vector<Entry>& es) { apply(make_layer_tar(es)); }
  // Applies `es` as the next layer, which must fail; returns the error.
  Error apply_fails(const std::vector<Entry>& es) {
    try {
      apply(es);
    } catch (const Error& e) {
      return e;
    }
    ADD_FAILURE() << "the layer was applied";
    return Error(ErrorKind::kInternal, "");
  }

  const Inode* find(const std::string& path) const {
    const Inode* cur = tree.root.get();
    for (const auto& c : clean_path(path)) {
      auto it = cur->children.find(c);
      if (it == cur->children.end()) return nullptr;
      cur = it->second.inode.get();
    }
    return cur;
  }
  std::string content(const std::string& path) const {
    const Inode* n = find(path);
    if (!n) return "<missing>";
    std::string out(n->size, '\0');
    for (const auto& e : n->extents) {
      std::string buf(e.length, '\0');
      EXPECT_EQ(::pread(spool.get(), buf.data(), e.length, static_cast<off_t>(e.spool_offset)),
                static_cast<ssize_t>(e.length));
      out.replace(e.offset, e.length, buf);
    }
    return out;
  }
};

TEST(CleanPath, ConfinedToRoot) {
  EXPECT_EQ(clean_path("../../etc/passwd"), (std::vector<std::string>{"etc", "passwd"}));
  EXPECT_EQ(clean_path("/abs/./x//y/"), (std::vector<std::string>{"abs", "x", "y"}));
  EXPECT_EQ(clean_path("a/../../b"), (std::vector<std::string>{"b"}));
  EXPECT_TRUE(clean_path("./").empty());
  EXPECT_TRUE(clean_path("..").empty());
}

TEST(Apply, DotDotAndAbsoluteNamesStayInside) {
  Applied a;
  a.apply({file("../../escape", "1"), file("/abs/x", "2"), dir("d"), file("d/../../../up", "3")});
  EXPECT_EQ(a.content("escape"), "1");
  EXPECT_EQ(a.content("abs/x"), "2");
  EXPECT_EQ(a.content("up"), "3");
}

TEST(Apply, SymlinkedParentsResolveInsideTheImage) {
  Applied a;
  a.apply({dir("etc"), symlink_to("abs", "/etc"), symlink_to("rel", "../../../../etc"),
           symlink_to("root", "/"), symlink_to("chain", "abs")});
  a.apply(
      {file("abs/a", "a"), file("rel/b", "b"), file("root/../../c", "c"), file("chain/d", "d")});
  EXPECT_EQ(a.content("etc/a"), "a");
  EXPECT_EQ(a.content("etc/b"), "b");
  EXPECT_EQ(a.content("c"), "c");
  EXPECT_EQ(a.content("etc/d"), "d");
  // The final component is never followed: the entry replaces the symlink.
  a.apply({file("abs", "now a file")});
  EXPECT_EQ(a.find("abs")->type, NodeType::kFile);
  EXPECT_EQ(a.find("etc")->type, NodeType::kDir);
}

TEST(Apply, SymlinkLoopIsAnError) {
  Applied a;
  a.apply({symlink_to("loop", "loop")});
  try {
    a.apply({file("loop/x", "x")});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIntegrity);
    EXPECT_NE(std::string(e.what()).find("symbolic links"), std::string::npos) << e.what();
  }
}

TEST(Apply, WhiteoutsHideOnlyLowerLayersWhereverTheyAppear) {
  Applied a;
  a.apply({file("x", "lower"), dir("d"), file("d/old", "old")});
  // Whiteout after the layer's own "x", opaque after the layer's own d/new.
  a.apply({file("x", "upper"), file("d/new", "new"), whiteout("x"), opaque("d")});
  EXPECT_EQ(a.content("x"), "upper");
  EXPECT_EQ(a.content("d/new"), "new");
  EXPECT_EQ(a.find("d/old"), nullptr);
}

TEST(Apply, BareWhiteoutIsAnErrorAndAufsMetadataIgnored) {
  Applied a;
  a.apply({file(".wh..wh.plnk", ""), file("keep", "k")});
  EXPECT_EQ(a.find(".wh..wh.plnk"), nullptr);
  EXPECT_THROW(a.apply({file("d/.wh.", "")}), Error);
}

TEST(Apply, WhiteoutsOfDotAndDotDotAreRefusedAndRemoveNothing) {
  // ".wh.." and ".wh..." would hide "." and "..": the whiteout's own directory and its parent.
  for (const std::string bad : {"a/b/.", "a/b/..", "a/b/./.", "./.", "."}) {
    Applied a;
    a.apply({dir("a"), dir("a/b"), file("a/b/f", "f"), file("a/g", "g")});
    Error e = a.apply_fails({whiteout(bad)});
    EXPECT_EQ(e.kind(), ErrorKind::kIntegrity) << bad;
    EXPECT_NE(std::string(e.what()).find("layer test"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("invalid whiteout entry"), std::string::npos) << e.what();
    EXPECT_EQ(a.content("a/b/f"), "f") << bad;
    EXPECT_EQ(a.content("a/g"), "g") << bad;
  }
  // Names that only start like those are names.
  Applied a;
  a.apply(
      {dir("a"), file("a/..x", "1"), file("a/...", "2"), file("a/.wh", "3"), file("a/keep", "4")});
  a.apply({whiteout("a/..x"), whiteout("a/..."), whiteout("a/.wh")});
  EXPECT_EQ(a.find("a/..x"), nullptr);
  EXPECT_EQ(a.find("a/..."), nullptr);
  EXPECT_EQ(a.find("a/.wh"), nullptr);
  EXPECT_EQ(a.content("a/keep"), "4");
}

TEST(Apply, WhiteoutEntriesNamingNoNameAreRefusedWhenApplied) {
  // The same rule where entries come from elsewhere than decode_tar: never a directory removed.
  for (const std::string path : {"a/b/..", "a/b/.", "a/b/", ""}) {
    Tree tree;
    auto a = std::make_shared<Inode>();
    a->type = NodeType::kDir;
    auto b = std::make_shared<Inode>();
    b->type = NodeType::kDir;
    a->children["b"] = Dentry{b, 1};
    tree.root->children["a"] = Dentry{a, 1};
    DecodedLayer d;
    d.entries.push_back({LayerEntry::Kind::kWhiteout, path, "", Inode{}});
    EXPECT_THROW(apply_layer(tree, d, 2, 2, "layer test"), Error) << path;
    ASSERT_TRUE(tree.root->children.count("a")) << path;
    EXPECT_TRUE(a->children.count("b")) << path;
  }
}

TEST(Apply, PathsLongerThanPathMaxAreALimit) {
  // "/d/d/.../x": 4095 bytes is the longest absolute path Linux's PATH_MAX (4096 with the NUL)
  // allows.
  std::string deep;
  for (int i = 0; i < 2046; ++i) deep += "d/";
  Applied a;
  a.apply({file(deep + "xy", "at the limit")});  // "/" + 4092 + 2 = 4095 bytes
  EXPECT_EQ(a.content(deep + "xy"), "at the limit");
  Error e = a.apply_fails({file(deep + "xyz", "one past")});
  EXPECT_EQ(e.kind(), ErrorKind::kLimit);
  EXPECT_NE(std::string(e.what()).find("layer test"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("4095 bytes"), std::string::npos) << e.what();
  EXPECT_EQ(a.find(deep + "xyz"), nullptr);
  // The same through a symlinked parent: the path that counts is the one in the image.
  Error via_link =
      a.apply_fails({symlink_to("s", deep.substr(0, deep.size() - 1)), file("s/xyz", "x")});
  EXPECT_EQ(via_link.kind(), ErrorKind::kLimit) << via_link.what();
  // And for hardlinks and the implicit parents of a very deep entry, which stop at the limit.
  Error link = a.apply_fails({hardlink_to(deep + "abc", deep + "xy")});
  EXPECT_EQ(link.kind(), ErrorKind::kLimit) << link.what();
  std::string very_deep;
  for (int i = 0; i < 10000; ++i) very_deep += "a/";
  Applied b;
  Error vd = b.apply_fails({file(very_deep + "f", "x")});
  EXPECT_EQ(vd.kind(), ErrorKind::kLimit) << vd.what();
  EXPECT_LT(std::string(vd.what()).size(), 512u) << "the entry's name is cut short in the message";
  size_t depth = 0;
  for (const Inode* n = b.tree.root.get(); !n->children.empty();
       n = n->children.begin()->second.inode.get())
    ++depth;
  EXPECT_LE(depth, 2047u);
}

TEST(Apply, SymlinkExpansionIsBudgeted) {
  // x -> x/x/x/... : each of the 255 allowed expansions would queue every component again.
  std::string target;
  for (int i = 0; i < 100000; ++i) target += "x/";
  Applied a;
  Error e = a.apply_fails({symlink_to("x", target), file("x/y", "y")});
  EXPECT_EQ(e.kind(), ErrorKind::kLimit) << e.what();
  EXPECT_NE(std::string(e.what()).find("layer test"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("\"x/y\""), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("65536 path components"), std::string::npos) << e.what();
  // Each entry within its own budget, the layer's entries together past theirs.
  std::string d2000;
  for (int i = 0; i < 2000; ++i) d2000 += "d/";
  Applied b;
  b.apply({dir(d2000), symlink_to("l", d2000)});
  std::vector<Entry> many;
  for (int i = 0; i < 2100; ++i) many.push_back(file("l/f" + std::to_string(i), ""));
  Error layer = b.apply_fails(many);
  EXPECT_EQ(layer.kind(), ErrorKind::kLimit) << layer.what();
  EXPECT_NE(std::string(layer.what()).find("in all"), std::string::npos) << layer.what();
  // Fewer such entries are fine.
  many.resize(100);
  b.apply(many);
  EXPECT_NE(b.find(d2000 + "f99"), nullptr);
}

TEST(Tree, DeepTreesAreReleasedWithoutRecursion) {
  // 100,000 nested directories released on a 256 KiB stack: a recursive release would need
  // megabytes. Hard links and a pointer held from outside survive.
  std::shared_ptr<Inode> kept, shared_file = std::make_shared<Inode>();
  run_with_stack(256 << 10, [&] {
    Tree tree;
    Inode* cur = tree.root.get();
    for (int i = 0; i < 100000; ++i) {
      auto d = std::make_shared<Inode>();
      d->type = NodeType::kDir;
      cur->children["d"] = Dentry{d, 1};
      cur->children["f"] = Dentry{shared_file, 1};
      if (i == 50000) kept = d;
      cur = d.get();
    }
  });
  ASSERT_NE(kept, nullptr);
  EXPECT_EQ(kept->children.size(), 2u);
  EXPECT_EQ(shared_file.use_count(), 1 + 49999);  // held by the kept subtree's directories
  run_with_stack(256 << 10, [&] { kept.reset(); });
  EXPECT_EQ(shared_file.use_count(), 1);
}

TEST(Apply, HardlinkRules) {
  Applied a;
  a.apply({file("f", "data"), dir("d")});
  a.apply({hardlink_to("g", "f"), hardlink_to("new/dir/h", "f")});  // missing parents are made
  EXPECT_EQ(a.find("g"), a.find("f"));
  EXPECT_EQ(a.find("new/dir/h"), a.find("f"));
  EXPECT_THROW(a.apply({hardlink_to("x", "missing")}), Error);
  EXPECT_THROW(a.apply({hardlink_to("x", "d")}), Error);
  // Removing one name keeps the others.
  a.apply({whiteout("f")});
  EXPECT_EQ(a.content("g"), "data");
}

TEST(Apply, ReplacementRules) {
  Applied a;
  a.apply({dir("d", 0700), file("d/keep", "k"), file("f", "file")});
  a.apply({dir("d", 0755).owner(5, 6), dir("f")});
  EXPECT_EQ(a.find("d")->mode, 0755u);
  EXPECT_EQ(a.find("d")->uid, 5u);
  EXPECT_EQ(a.content("d/keep"), "k");  // a dir over a dir keeps its contents
  EXPECT_EQ(a.find("f")->type, NodeType::kDir);
  a.apply({file("d", "now a file")});
  EXPECT_EQ(a.find("d")->type, NodeType::kFile);
  EXPECT_EQ(a.find("d/keep"), nullptr);
  EXPECT_THROW(a.apply({file("d/under-a-file", "x")}), Error);
  EXPECT_THROW(a.apply({file("./", "root as a file")}), Error);
}

TEST(Apply, LongNamesUidsAndXattrs) {
  Applied a;
  std::string longname = std::string(200, 'a') + "/" + std::string(250, 'b');
  a.apply(
      {file(longname, "long").owner(4000000000LL, 70000).xattr("user.k", std::string("v\0w", 3))});
  const Inode* n = a.find(longname);
  ASSERT_NE(n, nullptr);
  EXPECT_EQ(n->uid, 4000000000u);
  EXPECT_EQ(n->gid, 70000u);
  ASSERT_EQ(n->xattrs.size(), 1u);
  EXPECT_EQ(n->xattrs[0].second, std::string("v\0w", 3));
}

}  // namespace

namespace {

// Decodes `es` with the aligned layout into `fd` from byte `base`.
DecodedLayer decode_aligned(const std::vector<Entry>& es, int fd, uint64_t base,
                            uint64_t limit = UINT64_MAX) {
  SpoolTarget t;
  t.fd = fd;
  t.base = base;
  t.align = 4096;
  t.limit = limit;
  return decode_tar(bytes_source(make_layer_tar(es)), Compression::kNone, t, {}, "layer test");
}

const Inode& node_of(const DecodedLayer& d, const std::string& path) {
  for (const auto& e : d.entries)
    if (e.path == path) return e.node;
  throw std::runtime_error("no entry " + path);
}

}  // namespace

TEST(AlignedSpool, EachFileStartsOnABlockAndKeepsItsBlocksToItself) {
  TempDir dir{"img2vm-aligned-test"};
  UniqueFd fd = open_file(dir.path() / "out", O_RDWR | O_CREAT, 0600);
  const uint64_t base = 3 * 4096;
  DecodedLayer d =
      decode_aligned({file("one", "1"), file("empty", ""), file("block", std::string(4096, 'b')),
                      file("more", std::string(5000, 'm')), file("last", "L")},
                     fd.get(), base);
  auto at = [&](const std::string& p) {
    const Inode& n = node_of(d, p);
    EXPECT_EQ(n.extents.size(), 1u) << p;
    return n.extents.empty() ? UINT64_MAX : n.extents[0].spool_offset;
  };
  EXPECT_EQ(at("one"), 0u);
  EXPECT_TRUE(node_of(d, "empty").extents.empty());
  EXPECT_EQ(at("block"), 4096u);
  EXPECT_EQ(at("more"), 2u * 4096);
  EXPECT_EQ(at("last"), 4u * 4096);
  EXPECT_EQ(d.spool_bytes, 5u * 4096);
  EXPECT_EQ(d.data_bytes, 1u + 4096 + 5000 + 1);
  std::string got(d.spool_bytes, '\0');
  ASSERT_EQ(::pread(fd.get(), got.data(), got.size(), static_cast<off_t>(base)),
            static_cast<ssize_t>(4 * 4096 + 1));
  EXPECT_EQ(got.substr(0, 2), std::string("1\0", 2));  // the rest of a file's last block stays zero
  EXPECT_EQ(got.substr(4096, 4096), std::string(4096, 'b'));
  EXPECT_EQ(got.substr(2 * 4096, 5000), std::string(5000, 'm'));
  EXPECT_EQ(got.substr(2 * 4096 + 5000, 4096 - (5000 - 4096)),
            std::string(4096 - (5000 - 4096), '\0'));
  EXPECT_EQ(got.substr(4 * 4096, 1), "L");
  std::string before(base, 'x');
  ASSERT_EQ(::pread(fd.get(), before.data(), base, 0), static_cast<ssize_t>(base));
  EXPECT_EQ(before, std::string(base, '\0'));  // nothing is written below `base`
}

TEST(AlignedSpool, DataPastTheLimitIsSpoolFull) {
  TempDir dir{"img2vm-aligned-test"};
  UniqueFd fd = open_file(dir.path() / "out", O_RDWR | O_CREAT, 0600);
  // Two one-byte files need two blocks: a one-block limit is passed by the second.
  EXPECT_NO_THROW(decode_aligned({file("a", "a")}, fd.get(), 0, 4096));
  try {
    decode_aligned({file("a", "a"), file("b", "b")}, fd.get(), 0, 4096);
    ADD_FAILURE() << "no SpoolFull";
  } catch (const SpoolFull& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kLimit);
    EXPECT_NE(std::string(e.what()).find("layer test"), std::string::npos) << e.what();
  }
}
