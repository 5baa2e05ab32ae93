// Large directories come out as hashed trees (htree / dir_index): e2fsck -fn checks the index
// and the hash order; the index is also read back here and every name looked up through it the
// way the kernel does (root, dx_nodes, leaf, then on to the next leaf only while the next
// bound carries the same hash), so an index that e2fsck accepts but a lookup cannot use fails.
#include <gtest/gtest.h>

extern "C" {
#include <et/com_err.h>
}
#include <ext2fs/ext2fs.h>

#include <algorithm>
#include <clocale>
#include <cstring>
#include <set>
#include <stdexcept>

#include "fs_snapshot.hpp"
#include "image_builder.hpp"
#include "img2vm/base/digest.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/rootfs/convert.hpp"
#include "process.hpp"

using namespace img2vm;
using namespace img2vm::testing;
namespace fs = std::filesystem;

namespace {

void ck(errcode_t e, const std::string& what) {
  if (e) throw std::runtime_error("libext2fs: " + what + ": " + error_message(e));
}

class Image {
 public:
  explicit Image(const fs::path& p) {
    ck(ext2fs_open(p.c_str(), EXT2_FLAG_64BITS, 0, 0, unix_io_manager, &fs_), "open " + p.string());
  }
  ~Image() { ext2fs_close_free(&fs_); }
  Image(const Image&) = delete;
  Image& operator=(const Image&) = delete;
  ext2_filsys get() const { return fs_; }

  ext2_ino_t ino(const std::string& path) const {
    ext2_ino_t i = 0;
    ck(ext2fs_namei(fs_, EXT2_ROOT_INO, EXT2_ROOT_INO, path.c_str(), &i), "namei " + path);
    return i;
  }
  uint32_t flags(ext2_ino_t i) const {
    struct ext2_inode in;
    ck(ext2fs_read_inode(fs_, i, &in), "read inode");
    return in.i_flags;
  }
  // Logical block `lblk` of directory `dir`, its checksum verified.
  std::string dir_block(ext2_ino_t dir, uint64_t lblk) const {
    blk64_t pblk = 0;
    ck(ext2fs_bmap2(fs_, dir, nullptr, nullptr, 0, lblk, nullptr, &pblk), "bmap");
    std::string buf(fs_->blocksize, '\0');
    ck(ext2fs_read_dir_block4(fs_, pblk, buf.data(), 0, dir),
       "read dir block " + std::to_string(lblk));
    return buf;
  }

 private:
  ext2_filsys fs_ = nullptr;
};

struct DxEntry {
  uint32_t hash;  // 0 for the first entry of a block (implicit)
  uint32_t block;
};

struct DxBlock {
  uint16_t limit = 0;
  std::vector<DxEntry> ents;
};

DxBlock parse_index(const std::string& blk, size_t off) {
  DxBlock b;
  struct ext2_dx_countlimit cl;
  std::memcpy(&cl, blk.data() + off, sizeof cl);
  b.limit = ext2fs_le16_to_cpu(cl.limit);
  uint16_t count = ext2fs_le16_to_cpu(cl.count);
  if (count == 0 || count > b.limit)
    throw std::runtime_error("bad dx count " + std::to_string(count));
  for (unsigned i = 0; i < count; ++i) {
    struct ext2_dx_entry e;
    std::memcpy(&e, blk.data() + off + i * sizeof e, sizeof e);
    b.ents.push_back({i ? ext2fs_le32_to_cpu(e.hash) : 0, ext2fs_le32_to_cpu(e.block)});
  }
  return b;
}

// An htree directory read back from the image.
class Htree {
 public:
  Htree(const Image& img, ext2_ino_t dir) : img_(img), dir_(dir) {
    std::string blk0 = img.dir_block(dir, 0);
    std::memcpy(&info, blk0.data() + 24, sizeof info);
    if (info.info_length != 8 || info.reserved_zero) throw std::runtime_error("no dx_root_info");
    root = parse_index(blk0, 24 + info.info_length);
    const struct ext2_super_block* sb = img.get()->super;
    hash_alg_ = info.hash_version;
    if (hash_alg_ <= EXT2_HASH_TEA && (sb->s_flags & EXT2_FLAGS_UNSIGNED_HASH)) hash_alg_ += 3;
  }

  struct ext2_dx_root_info info;
  DxBlock root;

  uint32_t hash(std::string_view name) const {
    ext2_dirhash_t h = 0;
    ck(ext2fs_dirhash2(hash_alg_, name.data(), static_cast<int>(name.size()), nullptr, 0,
                       img_.get()->super->s_hash_seed, &h, nullptr),
       "dirhash");
    return h;
  }

  DxBlock node(uint32_t block) const {
    std::string b = img_.dir_block(dir_, block);
    struct ext2_dir_entry d;
    std::memcpy(&d, b.data(), sizeof d);
    if (d.inode != 0 || d.rec_len != img_.get()->blocksize)
      throw std::runtime_error("not a dx_node");
    return parse_index(b, 8);
  }

  // Looks `name` up as the kernel does; its inode, or 0.
  ext2_ino_t find(std::string_view name) const {
    const uint32_t h = hash(name);
    struct Frame {
      DxBlock b;
      size_t at;
    };
    std::vector<Frame> path;
    DxBlock cur = root;
    for (unsigned level = 0;; ++level) {
      size_t at = 0;  // the last entry whose bound (continuation bit included) is <= the hash
      while (at + 1 < cur.ents.size() && cur.ents[at + 1].hash <= h) ++at;
      path.push_back({cur, at});
      if (level == info.indirect_levels) break;
      cur = node(cur.ents[at].block);
    }
    for (;;) {
      if (ext2_ino_t ino = find_in_leaf(path.back().b.ents[path.back().at].block, name)) return ino;
      size_t d = path.size();
      while (d > 0 && path[d - 1].at + 1 >= path[d - 1].b.ents.size()) --d;
      if (d == 0) return 0;
      Frame& f = path[d - 1];
      if ((f.b.ents[f.at + 1].hash & ~1u) != h) return 0;  // the hash does not go on
      ++f.at;
      for (size_t k = d; k < path.size(); ++k)
        path[k] = {node(path[k - 1].b.ents[path[k - 1].at].block), 0};
    }
  }

  // Every dx_entry bound below the root's, with the blocks they point at.
  std::vector<DxEntry> all_entries() const {
    std::vector<DxEntry> out = root.ents;
    if (info.indirect_levels) {
      out.clear();
      for (const DxEntry& r : root.ents) {
        DxBlock n = node(r.block);
        n.ents[0].hash = r.hash;
        out.insert(out.end(), n.ents.begin(), n.ents.end());
      }
    }
    return out;
  }

 private:
  ext2_ino_t find_in_leaf(uint32_t block, std::string_view name) const {
    std::string b = img_.dir_block(dir_, block);
    for (size_t off = 0; off + 8 <= b.size();) {
      struct ext2_dir_entry d;
      std::memcpy(&d, b.data() + off, 8);
      if (d.rec_len < 8) throw std::runtime_error("bad rec_len");
      size_t len = ext2fs_dirent_name_len(&d);
      if (d.inode && std::string_view(b.data() + off + 8, len) == name) return d.inode;
      off += d.rec_len;
    }
    return 0;
  }

  const Image& img_;
  ext2_ino_t dir_;
  int hash_alg_ = 0;
};

class Htrees : public ::testing::Test {
 protected:
  TempDir tmp{"img2vm-htree-test"};

  // Converts (with the manifest digest `digest` if given), asserts e2fsck -fn is clean.
  fs::path convert_ok(const BuiltImage& img, const std::string& name,
                      const std::string& digest = "", rootfs::ConvertOptions opt = {}) {
    rootfs::ImageInput in = image_input(img, tmp.path() / ("in-" + name));
    if (!digest.empty()) in.manifest_digest = Digest::sha256_of(digest);
    opt.output = tmp.path() / name;
    rootfs::convert(in, opt);
    std::string log;
    EXPECT_EQ(e2fsck(opt.output, &log), 0) << log;
    return opt.output;
  }

  // Names under `dir` in the image, read back by iterating every block.
  static std::set<std::string> listed(const FsTree& t, const std::string& dir) {
    std::set<std::string> out;
    for (const auto& [path, e] : t)
      if (path.size() > dir.size() + 1 && path.compare(0, dir.size() + 1, dir + "/") == 0 &&
          path.find('/', dir.size() + 1) == std::string::npos)
        out.insert(path.substr(dir.size() + 1));
    return out;
  }

  static void expect_all_found(const Image& img, const Htree& h, ext2_ino_t dir,
                               const std::vector<std::string>& names, size_t lookup_every) {
    size_t missing = 0, lookups = 0;
    for (size_t i = 0; i < names.size(); ++i) {
      if (!h.find(names[i]) && ++missing <= 5)
        ADD_FAILURE() << "not found through the index: " << names[i];
      if (i % lookup_every == 0) {
        ext2_ino_t ino = 0;
        EXPECT_EQ(ext2fs_lookup(img.get(), dir, names[i].data(), static_cast<int>(names[i].size()),
                                nullptr, &ino),
                  0)
            << names[i];
        ++lookups;
      }
    }
    EXPECT_EQ(missing, 0u);
    EXPECT_GT(lookups, 0u);
  }
};

// libarchive writes non-ASCII names into a tar only when the locale can encode them.
class Utf8Locale {
 public:
  Utf8Locale() : old_(std::setlocale(LC_CTYPE, nullptr)) {
    if (!std::setlocale(LC_CTYPE, "C.UTF-8")) throw std::runtime_error("no C.UTF-8 locale");
  }
  ~Utf8Locale() { std::setlocale(LC_CTYPE, old_.c_str()); }
  Utf8Locale(const Utf8Locale&) = delete;
  Utf8Locale& operator=(const Utf8Locale&) = delete;

 private:
  std::string old_;
};

std::string debugfs_htree_dump(const fs::path& image, const std::string& dir) {
  CommandResult r = run_command({"debugfs", "-R", "htree_dump " + dir, image.string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out + r.err;
}

// debugfs prints problems inside the dump ("--- EXPECTED" after a wrong dx tail checksum, "while
// reading" for a leaf that fails its checks); show them with some context. A dx block shows its
// checksum only when count/limit leave exactly the dx tail's room.
void expect_no_complaint(const std::string& dump) {
  EXPECT_NE(dump.find("Checksum: 0x"), std::string::npos) << dump.substr(0, 800);
  for (const char* word : {"EXPECTED", "while ", "Corrupt", "Not a hash-indexed"}) {
    size_t at = dump.find(word);
    EXPECT_EQ(at, std::string::npos) << word << " in:\n"
                                     << dump.substr(at < 400 ? 0 : at - 400, 800);
  }
}

TEST_F(Htrees, VariedNamesIndexedLookedUpAndSmallDirsLinear) {
  std::vector<std::string> names;
  for (int i = 0; i < 5000; ++i) {
    std::string n = std::to_string(i) + "_";
    const size_t len = static_cast<size_t>(i * 37 % 240);
    // Every seventh name has bytes >= 0x80 (UTF-8), where signed and unsigned hashing differ.
    if (i % 7 == 0)
      while (n.size() + 2 <= len) n += "\xc3\xa9";
    n.resize(std::max(n.size(), len), static_cast<char>('a' + i % 26));
    names.push_back(n);
  }
  std::vector<Entry> es{dir("big"), dir("small"), file("small/a", "a"), file("small/b", "b")};
  for (const auto& n : names) es.push_back(file("big/" + n, ""));
  ImageSpec spec;
  spec.layers.push_back(layer(es, LayerCompression::kNone));
  BuiltImage built;
  {
    Utf8Locale utf8;
    built = build_image(spec);
  }
  fs::path out = convert_ok(built, "varied.ext4");

  std::set<std::string> want(names.begin(), names.end());
  EXPECT_EQ(listed(read_ext4(out), "/big"), want);

  Image img(out);
  ext2_ino_t big = img.ino("/big");
  ASSERT_TRUE(img.flags(big) & EXT2_INDEX_FL);
  EXPECT_FALSE(img.flags(img.ino("/small")) & EXT2_INDEX_FL);
  EXPECT_FALSE(img.flags(EXT2_ROOT_INO) & EXT2_INDEX_FL);
  EXPECT_FALSE(img.flags(img.ino("/lost+found")) & EXT2_INDEX_FL);
  Htree h(img, big);
  EXPECT_EQ(h.info.indirect_levels, 0);
  EXPECT_EQ(h.info.hash_version, img.get()->super->s_def_hash_version);
  EXPECT_EQ(h.root.limit, (4096 - 32 - 8) / 8);  // room for the dx tail
  EXPECT_GT(h.root.ents.size(), 100u);
  // Leaves are filled to about 80%: more leaves than packed ones would need, not 2x more.
  uint64_t bytes = 0;
  for (const auto& n : names) bytes += (8 + n.size() + 3) & ~size_t{3};
  EXPECT_GE(h.root.ents.size(), bytes / 4084 + 1);
  EXPECT_LE(h.root.ents.size(), bytes / 3000 + 1);
  expect_all_found(img, h, big, names, 50);
  EXPECT_EQ(h.find("no-such-name"), 0u);
  EXPECT_TRUE(img.get()->super->s_flags & EXT2_FLAGS_SIGNED_HASH);
  EXPECT_FALSE(img.get()->super->s_flags & EXT2_FLAGS_UNSIGNED_HASH);
  EXPECT_TRUE(ext2fs_has_feature_dir_index(img.get()->super));

  std::string dump = debugfs_htree_dump(out, "/big");
  EXPECT_NE(dump.find("Indirect levels: 0"), std::string::npos) << dump.substr(0, 2000);
  expect_no_complaint(dump);
}

TEST_F(Htrees, TwoLevelIndexAndByteForByteReproducible) {
  // 60,000 names of 24-31 bytes need over 507 leaves: the root points at dx_nodes.
  std::vector<std::string> names;
  for (int i = 0; i < 60000; ++i)
    names.push_back("entry-" + std::to_string(i * 7919) + std::string(i % 8, 'z') + ".so.1");
  std::vector<Entry> es{dir("lib")};
  for (const auto& n : names) es.push_back(file("lib/" + n, ""));
  ImageSpec spec;
  spec.layers.push_back(layer(es, LayerCompression::kNone));
  BuiltImage built = build_image(spec);
  fs::path one = convert_ok(built, "one.ext4"), two = convert_ok(built, "two.ext4");
  EXPECT_TRUE(read_file(one) == read_file(two));

  std::set<std::string> want(names.begin(), names.end());
  EXPECT_EQ(listed(read_ext4(one), "/lib"), want);

  Image img(one);
  ext2_ino_t lib = img.ino("/lib");
  ASSERT_TRUE(img.flags(lib) & EXT2_INDEX_FL);
  Htree h(img, lib);
  EXPECT_EQ(h.info.indirect_levels, 1);
  EXPECT_GE(h.root.ents.size(), 2u);
  std::vector<DxEntry> leaves = h.all_entries();
  EXPECT_GT(leaves.size(), 507u);
  for (size_t i = 1; i < leaves.size(); ++i) EXPECT_LE(leaves[i - 1].hash, leaves[i].hash) << i;
  expect_all_found(img, h, lib, names, 997);

  std::string dump = debugfs_htree_dump(one, "/lib");
  EXPECT_NE(dump.find("Indirect levels: 1"), std::string::npos) << dump.substr(0, 2000);
  expect_no_complaint(dump);

  // The size estimate counts the index and the leaves' slack: no spare space needed.
  rootfs::ConvertOptions tight;
  tight.extra_space = 0;
  tight.extra_inodes = 0;
  convert_ok(built, "tight.ext4", "", tight);
}

TEST_F(Htrees, EqualHashesAcrossALeafBoundaryStayFindable) {
  // The hash seed comes from the manifest digest, which the input can set: learn the seed from
  // a first conversion, then find names whose hashes collide under it.
  const std::string digest = "htree-collisions";
  ImageSpec probe;
  probe.layers.push_back(layer({file("x", "")}));
  std::array<uint32_t, 4> seed;
  uint32_t sb_flags;
  {
    Image img(convert_ok(build_image(probe), "probe.ext4", digest));
    std::memcpy(seed.data(), img.get()->super->s_hash_seed, sizeof seed);
    sb_flags = img.get()->super->s_flags;
  }
  ASSERT_FALSE(sb_flags & EXT2_FLAGS_UNSIGNED_HASH);  // ASCII names: the same either way
  auto name = [](uint32_t i) {
    std::string n = "c" + std::to_string(i) + "-";
    n.resize(200, 'q');
    return n;
  };
  // About 1.2 million 200-byte names give ~300 pairs with equal 31-bit hashes; with ~15 names a
  // leaf, some pairs are split by a leaf boundary.
  std::vector<std::pair<uint32_t, uint32_t>> hashes;
  const uint32_t n_try = 1200000;
  hashes.reserve(n_try);
  for (uint32_t i = 0; i < n_try; ++i) {
    std::string n = name(i);
    ext2_dirhash_t h = 0;
    ck(ext2fs_dirhash2(EXT2_HASH_HALF_MD4, n.data(), static_cast<int>(n.size()), nullptr, 0,
                       seed.data(), &h, nullptr),
       "dirhash");
    hashes.emplace_back(h, i);
  }
  std::sort(hashes.begin(), hashes.end());
  std::vector<std::string> names;
  for (size_t i = 1; i < hashes.size(); ++i)
    if (hashes[i].first == hashes[i - 1].first) {
      names.push_back(name(hashes[i - 1].second));
      names.push_back(name(hashes[i].second));
    }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  ASSERT_GT(names.size(), 400u);

  std::vector<Entry> es{dir("d")};
  for (const auto& n : names) es.push_back(file("d/" + n, ""));
  ImageSpec spec;
  spec.layers.push_back(layer(es, LayerCompression::kNone));
  fs::path out = convert_ok(build_image(spec), "collide.ext4", digest);
  Image img(out);
  ASSERT_EQ(std::memcmp(img.get()->super->s_hash_seed, seed.data(), sizeof seed), 0);
  ext2_ino_t d = img.ino("/d");
  Htree h(img, d);
  size_t continued = 0;
  for (const DxEntry& e : h.all_entries()) continued += e.hash & 1;
  EXPECT_GT(continued, 0u) << "no equal hashes straddle a leaf boundary: the test proves nothing";
  expect_all_found(img, h, d, names, 10);
  EXPECT_EQ(listed(read_ext4(out), "/d"), std::set<std::string>(names.begin(), names.end()));
}

TEST_F(Htrees, NameLongerThan255BytesIsAnError) {
  ImageSpec spec;
  spec.layers.push_back(layer({file("d/ok", ""), file("d/" + std::string(256, 'n'), "")}));
  BuiltImage img = build_image(spec);
  rootfs::ConvertOptions opt;
  opt.output = tmp.path() / "long.ext4";
  try {
    rootfs::convert(image_input(img, tmp.path() / "in-long"), opt);
    ADD_FAILURE() << "a 256-byte name converted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported) << e.what();
    EXPECT_NE(std::string(e.what()).find("directory \"/d\""), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("longer than 255"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(opt.output));
}

}  // namespace
