// convert(): builder images flattened into ext4, read back through libext2fs, checked with
// e2fsck -fn every time.
#include "img2vm/rootfs/convert.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "fs_snapshot.hpp"
#include "image_builder.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/guestabi/config.hpp"

using namespace img2vm;
using namespace img2vm::testing;
namespace fs = std::filesystem;

namespace {

// Whether files in `dir` can have ranges collapsed (ext4 and XFS can), as in-place decoding needs.
bool can_collapse(const fs::path& dir) {
  UniqueFd fd = open_file(dir / "collapse-probe", O_RDWR | O_CREAT | O_TRUNC, 0600);
  bool ok = ::ftruncate(fd.get(), 3 * 4096) == 0 &&
            ::fallocate(fd.get(), FALLOC_FL_COLLAPSE_RANGE, 4096, 4096) == 0;
  fs::remove(dir / "collapse-probe");
  return ok;
}

class Convert : public ::testing::Test {
 protected:
  TempDir tmp{"img2vm-convert-test"};

  // Converts, asserts e2fsck -fn is clean, returns the tree.
  FsTree convert_ok(const ImageSpec& spec, rootfs::ConvertOptions opt = {},
                    std::string name = "out.ext4") {
    BuiltImage img = build_image(spec);
    return convert_built(img, opt, name);
  }
  FsTree convert_built(const BuiltImage& img, rootfs::ConvertOptions opt = {},
                       std::string name = "out.ext4", bool* in_place = nullptr) {
    rootfs::ImageInput in = image_input(img, tmp.path() / ("in-" + name));
    opt.output = tmp.path() / name;
    rootfs::ConvertResult r = rootfs::convert(in, opt);
    if (in_place) *in_place = r.data_in_place;
    EXPECT_EQ(r.size_bytes, fs::file_size(opt.output));
    std::string log;
    int rc = e2fsck(opt.output, &log);
    EXPECT_EQ(rc, 0) << log;
    return read_ext4(opt.output);
  }
};

TEST_F(Convert, BasicFilesDirsAndInjectedConfig) {
  ImageSpec spec;
  spec.layers.push_back(
      layer({dir("etc", 0755), file("etc/hostname", "box\n"), dir("var/empty", 0700),
             symlink_to("bin", "usr/bin"), dir("usr/bin"), file("usr/bin/sh", "#!sh", 0755)}));
  spec.config.cmd = {"/bin/sh"};
  spec.config.env = {"PATH=/usr/bin"};
  FsTree t = convert_ok(spec);
  ASSERT_TRUE(t.count("/etc/hostname"));
  EXPECT_EQ(t["/etc/hostname"].type, 'f');
  EXPECT_EQ(t["/etc/hostname"].content, "box\n");
  EXPECT_EQ(t["/etc/hostname"].mode, 0644u);
  EXPECT_EQ(t["/etc/hostname"].mtime, 1700000000);
  EXPECT_EQ(t["/var/empty"].type, 'd');
  EXPECT_EQ(t["/var/empty"].mode, 0700u);
  EXPECT_EQ(t["/var"].mode, 0755u);  // implicit parent
  EXPECT_EQ(t["/bin"].type, 'l');
  EXPECT_EQ(t["/bin"].target, "usr/bin");
  EXPECT_EQ(t["/usr/bin/sh"].mode, 0755u);
  EXPECT_EQ(t["/.img2vm"].type, 'd');
  EXPECT_EQ(t["/.img2vm"].mode, 0755u);
  EXPECT_EQ(t["/.img2vm"].uid, 0u);
  guestabi::RuntimeConfig rc =
      guestabi::runtime_config_from_json(t["/.img2vm/config.json"].content);
  EXPECT_EQ(rc.cmd, std::vector<std::string>{"/bin/sh"});
  EXPECT_EQ(rc.env, std::vector<std::string>{"PATH=/usr/bin"});
  EXPECT_FALSE(t.count("/.img2vm/init"));
  EXPECT_EQ(t["/lost+found"].type, 'd');
}

// Fails to convert; returns the error. Asserts nothing is left in the output directory.
Error convert_fails(const rootfs::ImageInput& in, rootfs::ConvertOptions opt,
                    const fs::path& outdir) {
  fs::create_directories(outdir);
  opt.output = outdir / "out.ext4";
  try {
    rootfs::convert(in, opt);
  } catch (const Error& e) {
    std::vector<std::string> left;
    for (const auto& de : fs::directory_iterator(outdir))
      left.push_back(de.path().filename().string());
    EXPECT_TRUE(left.empty()) << ::testing::PrintToString(left);
    return e;
  }
  ADD_FAILURE() << "convert succeeded";
  return Error(ErrorKind::kInternal, "");
}

constexpr const char* kGzipMt = "application/vnd.oci.image.layer.v1.tar+gzip";
constexpr const char* kTarMt = "application/vnd.oci.image.layer.v1.tar";

TEST_F(Convert, ZstdPlainAndDockerLayers) {
  ImageSpec spec;
  spec.layers.push_back(layer({file("a", "gzip")}, LayerCompression::kGzip));
  spec.layers.push_back(layer({file("b", "zstd")}, LayerCompression::kZstd));
  spec.layers.push_back(layer({file("c", "plain")}, LayerCompression::kNone));
  FsTree t = convert_ok(spec);
  EXPECT_EQ(t["/a"].content, "gzip");
  EXPECT_EQ(t["/b"].content, "zstd");
  EXPECT_EQ(t["/c"].content, "plain");
  ImageSpec d;
  d.format = ManifestFormat::kDocker;
  d.layers.push_back(layer({file("docker", "v2s2")}));
  FsTree t2 = convert_ok(d, {}, "docker.ext4");
  EXPECT_EQ(t2["/docker"].content, "v2s2");
}

TEST_F(Convert, ReproducibleByteForByte) {
  ImageSpec spec;
  std::vector<Entry> es{dir("d"), file("d/x", std::string(100000, 'x')), symlink_to("d/l", "x"),
                        hardlink_to("d/h", "d/x"), file("d/cap", "c").xattr("user.a", "b")};
  for (int i = 0; i < 300; ++i) es.push_back(file("many/f" + std::to_string(i), std::to_string(i)));
  spec.layers.push_back(layer(es));
  spec.layers.push_back(layer({file("z", "top")}, LayerCompression::kZstd));
  BuiltImage img = build_image(spec);
  fs::path init = tmp.path() / "init";
  write_file_atomic(init, std::string(50000, 'I'));
  rootfs::ConvertOptions opt;
  opt.init_binary = init;
  convert_built(img, opt, "one.ext4");
  opt.threads = 1;
  convert_built(img, opt, "two.ext4");
  EXPECT_TRUE(read_file(tmp.path() / "one.ext4") == read_file(tmp.path() / "two.ext4"));
  // A different manifest digest gives a different UUID (and so different bytes).
  rootfs::ImageInput in = image_input(img, tmp.path() / "in3");
  in.manifest_digest = Digest::sha256_of("other");
  opt.output = tmp.path() / "three.ext4";
  rootfs::convert(in, opt);
  EXPECT_FALSE(read_file(tmp.path() / "one.ext4") == read_file(tmp.path() / "three.ext4"));
}

// Layer data decoded straight into the output, through spool files, or in place until a layer
// outgrows its region and then again through spool files: the same bytes every time, and no
// byte of a file that a later layer removed or replaced is left in the image.
TEST_F(Convert, SameBytesHoweverTheLayerDataReachesTheOutput) {
  const std::string gone = "GONE-" + std::string(5000, 'g');    // removed by a whiteout
  const std::string old_v = "OLD-" + std::string(9000, 'o');    // replaced by the next layer
  const std::string opaque_v = "OPQ-" + std::string(300, 'q');  // hidden by an opaque dir
  std::string big(3u << 20, '\0');
  for (size_t i = 0; i < big.size(); i += 511) big[i] = static_cast<char>('a' + i % 26);
  std::vector<Entry> l1{file("gone", gone),
                        file("keep/old", old_v),
                        dir("opq"),
                        file("opq/x", opaque_v),
                        file("empty", ""),
                        file("exact", std::string(4096, 'e')),
                        file("one-more", std::string(4097, 'm')),
                        file("big", big),
                        hardlink_to("big-link", "big")};
  for (int i = 0; i < 200; ++i)
    l1.push_back(file("small/" + std::to_string(i), "s" + std::to_string(i)));
  std::vector<Entry> l2{whiteout("gone"), file("keep/old", "new"), opaque("opq"),
                        file("opq/y", "y")};
  std::vector<Entry> l3{file("top", std::string(10000, 't'))};
  ImageSpec spec;
  spec.layers.push_back(layer(l1));
  spec.layers.push_back(layer(l2, LayerCompression::kZstd));
  spec.layers.push_back(layer({}, LayerCompression::kNone));  // an empty layer
  spec.layers.push_back(layer(l3));
  BuiltImage img = build_image(spec);
  fs::path init = tmp.path() / "init";
  write_file_atomic(init, std::string(50000, 'I'));

  rootfs::ConvertOptions opt;
  opt.init_binary = init;
  bool in_place = false;
  FsTree t = convert_built(img, opt, "in-place.ext4", &in_place);
  EXPECT_EQ(in_place, can_collapse(tmp.path()));
  opt.in_place = false;
  convert_built(img, opt, "spooled.ext4", &in_place);
  EXPECT_FALSE(in_place);
  opt.in_place = true;
  opt.in_place_region = 64 << 10;  // the first layer outgrows it
  convert_built(img, opt, "outgrown.ext4", &in_place);
  EXPECT_FALSE(in_place);

  const std::string a = read_file(tmp.path() / "in-place.ext4");
  EXPECT_TRUE(a == read_file(tmp.path() / "spooled.ext4"));
  EXPECT_TRUE(a == read_file(tmp.path() / "outgrown.ext4"));
  EXPECT_EQ(a.find(gone.substr(0, 40)), std::string::npos);
  EXPECT_EQ(a.find(old_v.substr(0, 40)), std::string::npos);
  EXPECT_EQ(a.find(opaque_v.substr(0, 40)), std::string::npos);

  EXPECT_FALSE(t.count("/gone"));
  EXPECT_FALSE(t.count("/opq/x"));
  EXPECT_EQ(t["/keep/old"].content, "new");
  EXPECT_EQ(t["/opq/y"].content, "y");
  EXPECT_EQ(t["/empty"].content, "");
  EXPECT_EQ(t["/exact"].content, std::string(4096, 'e'));
  EXPECT_EQ(t["/one-more"].content, std::string(4097, 'm'));
  EXPECT_EQ(t["/one-more"].allocated, 2u * 4096);
  EXPECT_TRUE(t["/big"].content == big);
  EXPECT_EQ(t["/big"].ino, t["/big-link"].ino);
  EXPECT_EQ(t["/small/199"].content, "s199");
  EXPECT_EQ(t["/top"].content, std::string(10000, 't'));
  EXPECT_EQ(t["/.img2vm/init"].content, std::string(50000, 'I'));
}

// The data of files that a later layer removed or replaced takes no room in the image: it is
// cut out (collapsed, or copied down), leaving the file system no larger than for an image that
// never had those files, and the same bytes however it was cut out.
TEST_F(Convert, RemovedFilesDataIsCutOutOfTheImage) {
  auto pattern = [](size_t n, char seed) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + static_cast<char>(i % 23));
    return s;
  };
  const std::string big = "BIG-" + pattern(8u << 20, 'A');    // removed, at the area's start
  const std::string mid = "MID-" + pattern(300u << 10, 'a');  // replaced
  const std::string tail = "TAIL-" + pattern(2u << 20, 'k');  // removed, at the area's end
  const std::string fresh = pattern(100u << 10, '0');
  const std::string early = "EARLY-" + pattern(100u << 10, 'e');  // removed, just before `large`
  const std::string large = pattern(1u << 20, 'L');               // moves down less than its size
  std::vector<Entry> small;
  for (int i = 0; i < 20; ++i)
    small.push_back(file("small/" + std::to_string(i), std::string(5000 + i, 's')));
  std::vector<Entry> l1{file("early", early), file("large", large), file("big", big),
                        file("keep", "k"), file("mid", mid)};
  l1.insert(l1.end(), small.begin(), small.end());
  l1.push_back(file("tail", tail));
  std::vector<Entry> l2{whiteout("early"), whiteout("big"), file("mid", "replaced"),
                        whiteout("tail"), file("new", fresh)};
  ImageSpec two;
  two.layers.push_back(layer(l1));
  two.layers.push_back(layer(l2, LayerCompression::kZstd));
  // The same final tree, never having had the removed data.
  std::vector<Entry> only{file("large", large), file("keep", "k"), file("mid", "replaced")};
  only.insert(only.end(), small.begin(), small.end());
  only.push_back(file("new", fresh));
  ImageSpec one;
  one.layers.push_back(layer(only));

  BuiltImage img = build_image(two);
  FsTree t = convert_built(img, {}, "collapsed.ext4");
  rootfs::ConvertOptions copy;
  copy.compact_by_copy = true;
  convert_built(img, copy, "copied.ext4");
  rootfs::ConvertOptions spooled;
  spooled.in_place = false;
  convert_built(img, spooled, "spooled.ext4");
  convert_ok(one, {}, "never.ext4");

  const std::string a = read_file(tmp.path() / "collapsed.ext4");
  EXPECT_TRUE(a == read_file(tmp.path() / "copied.ext4"));
  EXPECT_TRUE(a == read_file(tmp.path() / "spooled.ext4"));
  for (const std::string* gone : {&early, &big, &mid, &tail})
    EXPECT_EQ(a.find(gone->substr(0, 64)), std::string::npos);
  // Before, the removed 10.4 MiB stayed in the file system as free space.
  const uint64_t size = fs::file_size(tmp.path() / "collapsed.ext4"),
                 never = fs::file_size(tmp.path() / "never.ext4");
  EXPECT_LE(size, never + (256u << 10)) << size << " vs " << never;

  EXPECT_FALSE(t.count("/early"));
  EXPECT_TRUE(t["/large"].content == large);
  EXPECT_FALSE(t.count("/big"));
  EXPECT_FALSE(t.count("/tail"));
  EXPECT_EQ(t["/keep"].content, "k");
  EXPECT_EQ(t["/mid"].content, "replaced");
  EXPECT_TRUE(t["/new"].content == fresh);
  for (int i = 0; i < 20; ++i)
    EXPECT_EQ(t["/small/" + std::to_string(i)].content, std::string(5000 + i, 's')) << i;
}

// Sparse files of several layers keep their holes when their data is adopted in place, and
// give the same bytes through spool files.
TEST_F(Convert, SparseLayersInPlaceAndThroughSpools) {
  const uint64_t size = 40ull << 20;
  // Runs a few bytes apart share blocks; runs far apart get blocks of their own.
  std::string t1 = sparse_tar(
      "s1", size,
      {{10, "a"}, {100, "b"}, {5000, "c"}, {1u << 20, std::string(9000, 'd')}, {size - 3, "end"}});
  std::string t2 = sparse_tar("s2", 1u << 20, {{4095, "xy"}, {8192 + 7, "z"}});
  // Ten runs far apart: more extents than the inode holds, so an extent tree block is needed.
  std::vector<std::pair<uint64_t, std::string>> runs;
  for (int i = 0; i < 10; ++i)
    runs.push_back({(uint64_t(i) << 20) + 1, std::string(5000, static_cast<char>('0' + i))});
  std::string t3 = sparse_tar("s3", 10u << 20, runs);
  FsTree t;
  std::string bytes[2];
  for (int k = 0; k < 2; ++k) {
    rootfs::ImageInput in = raw_input({{kTarMt, t1}, {kTarMt, t2}, {kTarMt, t3}},
                                      tmp.path() / ("raw" + std::to_string(k)));
    rootfs::ConvertOptions opt;
    opt.in_place = k == 0;
    opt.output = tmp.path() / ("sparse" + std::to_string(k) + ".ext4");
    rootfs::convert(in, opt);
    std::string log;
    ASSERT_EQ(e2fsck(opt.output, &log), 0) << log;
    bytes[k] = read_file(opt.output);
    if (k == 0) t = read_ext4(opt.output);
  }
  EXPECT_TRUE(bytes[0] == bytes[1]);
  const std::string& s1 = t["/s1"].content;
  ASSERT_EQ(s1.size(), size);
  EXPECT_EQ(s1.substr(10, 1), "a");
  EXPECT_EQ(s1.substr(100, 1), "b");
  EXPECT_EQ(s1.substr(5000, 1), "c");
  EXPECT_EQ(s1.substr(11, 89), std::string(89, '\0'));
  EXPECT_EQ(s1.substr(1u << 20, 9000), std::string(9000, 'd'));
  EXPECT_EQ(s1.substr(size - 3), "end");
  EXPECT_EQ(t["/s1"].allocated, (2u + 3 + 1) * 4096);  // blocks 0-1, three for "d", the last
  const std::string& s2 = t["/s2"].content;
  ASSERT_EQ(s2.size(), 1u << 20);
  EXPECT_EQ(s2.substr(4095, 2), "xy");
  EXPECT_EQ(s2.substr(8199, 1), "z");
  EXPECT_EQ(s2.substr(4097, 4102), std::string(4102, '\0'));
  EXPECT_EQ(t["/s2"].allocated, 3u * 4096);
  const std::string& s3 = t["/s3"].content;
  ASSERT_EQ(s3.size(), 10u << 20);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(s3.substr((uint64_t(i) << 20) + 1, 5000),
              std::string(5000, static_cast<char>('0' + i)))
        << i;
    EXPECT_EQ(s3[uint64_t(i) << 20], '\0') << i;
  }
  EXPECT_EQ(t["/s3"].allocated, 10u * 2 * 4096);  // two blocks per run (not the tree's block)
}

TEST_F(Convert, InitInjectedAndImageReservedDirReplaced) {
  ImageSpec spec;
  spec.layers.push_back(
      layer({dir(".img2vm", 0777), file(".img2vm/evil", "x"), file("keep", "k")}));
  spec.config.entrypoint = {"/app"};
  spec.config.working_dir = "/srv";
  fs::path init = tmp.path() / "init";
  write_file_atomic(init,
                    "\x7f"
                    "ELF fake init",
                    0600);
  rootfs::ConvertOptions opt;
  opt.init_binary = init;
  FsTree t = convert_ok(spec, opt);
  EXPECT_FALSE(t.count("/.img2vm/evil"));
  EXPECT_EQ(t["/.img2vm"].mode, 0755u);
  EXPECT_EQ(t["/.img2vm/init"].mode, 0755u);
  EXPECT_EQ(t["/.img2vm/init"].uid, 0u);
  EXPECT_EQ(t["/.img2vm/init"].content, read_file(init));
  EXPECT_EQ(t["/.img2vm/config.json"].mode, 0644u);
  guestabi::RuntimeConfig rc =
      guestabi::runtime_config_from_json(t["/.img2vm/config.json"].content);
  EXPECT_EQ(rc.entrypoint, std::vector<std::string>{"/app"});
  EXPECT_EQ(rc.working_dir, "/srv");
  EXPECT_EQ(t["/keep"].content, "k");
}

TEST_F(Convert, RootDirectoryOwnerAndModeFromImage) {
  ImageSpec spec;
  Entry root = dir("./", 0700).owner(1000, 1001).with_mtime(1600000000);
  spec.layers.push_back(layer({root, file("f", "x")}));
  FsTree t = convert_ok(spec);
  EXPECT_EQ(t["/"].mode, 0700u);
  EXPECT_EQ(t["/"].uid, 1000u);
  EXPECT_EQ(t["/"].gid, 1001u);
  EXPECT_EQ(t["/"].mtime, 1600000000);
}

TEST_F(Convert, SparseFilesStaySparse) {
  const uint64_t size = 64ull << 20;
  std::string tar = sparse_tar(
      "sparse", size, {{0, "head"}, {8u << 20, std::string(10000, 's')}, {size - 4, "tail"}});
  FsTree t;
  {
    rootfs::ImageInput in = raw_input({{kTarMt, tar}}, tmp.path() / "raw");
    rootfs::ConvertOptions opt;
    opt.output = tmp.path() / "sparse.ext4";
    rootfs::convert(in, opt);
    std::string log;
    ASSERT_EQ(e2fsck(opt.output, &log), 0) << log;
    EXPECT_LT(fs::file_size(opt.output), 32ull << 20);  // sized from data, not from the holes
    t = read_ext4(opt.output);
  }
  const FsEntry& e = t["/sparse"];
  EXPECT_EQ(e.size, size);
  EXPECT_LE(e.allocated, 5u * 4096);
  ASSERT_EQ(e.content.size(), size);
  EXPECT_EQ(e.content.substr(0, 4), "head");
  EXPECT_EQ(e.content.substr(8u << 20, 10000), std::string(10000, 's'));
  EXPECT_EQ(e.content.substr(size - 4), "tail");
  EXPECT_EQ(e.content.substr(4, 4096), std::string(4096, '\0'));
}

TEST_F(Convert, LargeDirectoriesLargeFilesAndSlowSymlinks) {
  std::vector<Entry> es{dir("big")};
  for (int i = 0; i < 3000; ++i)
    es.push_back(file("big/entry-with-a-longish-name-" + std::to_string(i), std::to_string(i)));
  std::string blob(24u << 20, '\0');
  for (size_t i = 0; i < blob.size(); i += 4093) blob[i] = static_cast<char>(i * 7);
  es.push_back(file("blob", blob));
  es.push_back(symlink_to("fast", std::string(59, 'f')));
  es.push_back(symlink_to("slow", std::string(60, 's')));
  es.push_back(symlink_to("slower", std::string(4000, 'S')));
  ImageSpec spec;
  spec.layers.push_back(layer(es));
  FsTree t = convert_ok(spec);
  EXPECT_EQ(t.size(), 1u + 1 + 3000 + 4 +
                          3);  // /, big, its files, blob and links, lost+found .img2vm config.json
  EXPECT_EQ(t["/big/entry-with-a-longish-name-2999"].content, "2999");
  EXPECT_TRUE(t["/blob"].content == blob);
  EXPECT_EQ(t["/fast"].target, std::string(59, 'f'));
  EXPECT_EQ(t["/slow"].target, std::string(60, 's'));
  EXPECT_EQ(t["/slower"].target, std::string(4000, 'S'));
}

TEST_F(Convert, SizeOptions) {
  ImageSpec spec;
  spec.layers.push_back(layer({file("f", std::string(1 << 20, 'f'))}));
  BuiltImage img = build_image(spec);
  rootfs::ConvertOptions opt;
  opt.size = 64ull << 20;
  convert_built(img, opt, "sized.ext4");
  EXPECT_EQ(fs::file_size(tmp.path() / "sized.ext4"), 64ull << 20);
  rootfs::ConvertOptions small;
  small.extra_space = 0;
  convert_built(img, small, "small.ext4");
  rootfs::ConvertOptions roomy;
  roomy.extra_space = 100ull << 20;
  convert_built(img, roomy, "roomy.ext4");
  uint64_t a = fs::file_size(tmp.path() / "small.ext4"),
           b = fs::file_size(tmp.path() / "roomy.ext4");
  EXPECT_LT(a, 3ull << 20);  // 1 MiB of data plus metadata, minimal slack
  EXPECT_GE(b, (100ull << 20) + (1ull << 20));

  rootfs::ConvertOptions tiny;
  tiny.size = 512 * 1024;
  Error e = convert_fails(image_input(img, tmp.path() / "in-tiny"), tiny, tmp.path() / "tiny");
  EXPECT_EQ(e.kind(), ErrorKind::kLimit) << e.what();
  // Too small for the inode tables alone (libext2fs refuses to lay out the file system; it
  // was reported as an I/O error): 3,000 empty files in 1100 KiB.
  std::vector<Entry> empties;
  for (int i = 0; i < 3000; ++i) empties.push_back(file("e" + std::to_string(i), ""));
  ImageSpec many;
  many.layers.push_back(layer(empties));
  rootfs::ConvertOptions few_blocks;
  few_blocks.size = 1100 * 1024;
  Error e2 = convert_fails(image_input(build_image(many), tmp.path() / "in-many"), few_blocks,
                           tmp.path() / "many");
  EXPECT_EQ(e2.kind(), ErrorKind::kLimit) << e2.what();
  EXPECT_NE(std::string(e2.what()).find("too small"), std::string::npos) << e2.what();
}

TEST_F(Convert, ErrorCorruptGzip) {
  std::string good = compress_bytes(make_layer_tar({file("a", std::string(100000, 'a'))}),
                                    LayerCompression::kGzip);
  std::string bad = good;
  for (size_t i = 20; i < 60; ++i) bad[i] = static_cast<char>(bad[i] ^ 0x5a);
  rootfs::ImageInput in = raw_input({{kGzipMt, good}, {kGzipMt, bad}}, tmp.path() / "raw");
  Error e = convert_fails(in, {}, tmp.path() / "out");
  EXPECT_EQ(e.kind(), ErrorKind::kIntegrity) << e.what();
  EXPECT_NE(std::string(e.what()).find(in.layers[1].digest.str()), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("layer 2/2"), std::string::npos) << e.what();
}

TEST_F(Convert, ErrorTruncatedLayer) {
  std::string good = compress_bytes(make_layer_tar({file("a", std::string(200000, 'a'))}),
                                    LayerCompression::kGzip);
  rootfs::ImageInput in = raw_input({{kGzipMt, good}}, tmp.path() / "raw");
  // The descriptor says the full size; the blob on disk is cut short.
  write_file_atomic(tmp.path() / "raw" / in.layers[0].digest.hex(),
                    good.substr(0, good.size() / 2));
  Error e = convert_fails(in, {}, tmp.path() / "out");
  EXPECT_EQ(e.kind(), ErrorKind::kIntegrity) << e.what();
  EXPECT_NE(std::string(e.what()).find(in.layers[0].digest.str()), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
}

TEST_F(Convert, ErrorDigestMismatch) {
  std::string good =
      compress_bytes(make_layer_tar({file("a", "content")}), LayerCompression::kGzip);
  std::string other =
      compress_bytes(make_layer_tar({file("a", "CONTENT")}), LayerCompression::kGzip);
  ASSERT_EQ(good.size(), other.size());
  rootfs::ImageInput in = raw_input({{kGzipMt, good}}, tmp.path() / "raw");
  write_file_atomic(tmp.path() / "raw" / in.layers[0].digest.hex(), other);
  Error e = convert_fails(in, {}, tmp.path() / "out");
  EXPECT_EQ(e.kind(), ErrorKind::kIntegrity) << e.what();
  EXPECT_NE(std::string(e.what()).find(in.layers[0].digest.str()), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("digest mismatch"), std::string::npos) << e.what();
}

TEST_F(Convert, ErrorUnsupportedMediaType) {
  rootfs::ImageInput in =
      raw_input({{"application/vnd.oci.image.layer.v1.tar+bzip2", "BZh9"}}, tmp.path() / "raw");
  Error e = convert_fails(in, {}, tmp.path() / "out");
  EXPECT_EQ(e.kind(), ErrorKind::kUnsupported) << e.what();
  EXPECT_NE(std::string(e.what()).find(in.layers[0].digest.str()), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("bzip2"), std::string::npos) << e.what();
}

TEST_F(Convert, ErrorMediaTypeDoesNotMatchMagic) {
  std::string plain = make_layer_tar({file("a", "content")});
  rootfs::ImageInput in = raw_input({{kGzipMt, plain}}, tmp.path() / "raw");
  Error e = convert_fails(in, {}, tmp.path() / "out");
  EXPECT_EQ(e.kind(), ErrorKind::kIntegrity) << e.what();
  EXPECT_NE(std::string(e.what()).find("not gzip"), std::string::npos) << e.what();
}

// The config's diff_ids name each layer's uncompressed content: a layer that does not hash to
// its diff_id fails the conversion (in place or through spool files) and leaves no file.
TEST_F(Convert, ErrorDiffIdMismatch) {
  ImageSpec spec;
  spec.layers.push_back(layer({file("a", std::string(300000, 'a'))}, LayerCompression::kGzip));
  spec.layers.push_back(layer({file("b", "b")}, LayerCompression::kZstd));
  spec.layers.push_back(layer({file("c", "c")}, LayerCompression::kNone));
  BuiltImage good = build_image(spec);
  convert_built(good, {}, "good.ext4");  // the same layers with their real diff_ids convert
  for (size_t bad = 0; bad < 3; ++bad) {
    ImageSpec s = spec;
    s.diff_ids = std::vector<std::string>();
    for (const auto& l : good.layers) s.diff_ids->push_back(l.diff_id.str());
    const Digest wrong = Digest::sha256_of("something else");
    (*s.diff_ids)[bad] = wrong.str();
    BuiltImage img = build_image(s);
    for (bool in_place : {true, false}) {
      rootfs::ConvertOptions opt;
      opt.in_place = in_place;
      std::string name = "bad" + std::to_string(bad) + (in_place ? "-in-place" : "-spools");
      Error e =
          convert_fails(image_input(img, tmp.path() / ("in-" + name)), opt, tmp.path() / name);
      EXPECT_EQ(e.kind(), ErrorKind::kIntegrity) << e.what();
      EXPECT_EQ(std::string(e.what()), "layer " + std::to_string(bad + 1) +
                                           ": diff_id mismatch: config says " + wrong.str() +
                                           ", content is " + good.layers[bad].diff_id.str());
    }
  }
}

TEST_F(Convert, ErrorDiffIdsDoNotNumberTheLayers) {
  ImageSpec spec;
  spec.layers.push_back(layer({file("a", "a")}));
  spec.layers.push_back(layer({file("b", "b")}));
  BuiltImage good = build_image(spec);
  ImageSpec fewer = spec;
  fewer.diff_ids = std::vector<std::string>{good.layers[0].diff_id.str()};
  Error e = convert_fails(image_input(build_image(fewer), tmp.path() / "in-fewer"), {},
                          tmp.path() / "fewer");
  EXPECT_EQ(e.kind(), ErrorKind::kIntegrity) << e.what();
  EXPECT_EQ(
      std::string(e.what()),
      "the image config lists 1 diff_id (rootfs.diff_ids) for 2 layers: it needs one per layer");
  ImageSpec more = spec;
  more.diff_ids = std::vector<std::string>{
      good.layers[0].diff_id.str(), good.layers[1].diff_id.str(), good.layers[1].diff_id.str()};
  e = convert_fails(image_input(build_image(more), tmp.path() / "in-more"), {},
                    tmp.path() / "more");
  EXPECT_NE(std::string(e.what()).find("lists 3 diff_ids (rootfs.diff_ids) for 2 layers"),
            std::string::npos)
      << e.what();
  // A config without rootfs.diff_ids (or without rootfs) has none for the layers.
  ImageSpec none = spec;
  none.omit_rootfs = true;
  e = convert_fails(image_input(build_image(none), tmp.path() / "in-none"), {},
                    tmp.path() / "none");
  EXPECT_NE(std::string(e.what()).find("lists 0 diff_ids (rootfs.diff_ids) for 2 layers"),
            std::string::npos)
      << e.what();
  none.omit_rootfs = false;
  none.diff_ids = std::vector<std::string>{};
  e = convert_fails(image_input(build_image(none), tmp.path() / "in-empty"), {},
                    tmp.path() / "empty");
  EXPECT_NE(std::string(e.what()).find("lists 0 diff_ids"), std::string::npos) << e.what();
  // Entries that are not digests.
  ImageSpec junk = spec;
  junk.diff_ids = std::vector<std::string>{good.layers[0].diff_id.str(), "sha256:nope"};
  e = convert_fails(image_input(build_image(junk), tmp.path() / "in-junk"), {},
                    tmp.path() / "junk");
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << e.what();
  EXPECT_NE(std::string(e.what()).find("image config: rootfs.diff_ids holds sha256:nope"),
            std::string::npos)
      << e.what();
}

TEST_F(Convert, ACallersDiffIdMustAgreeWithTheConfig) {
  ImageSpec spec;
  spec.layers.push_back(layer({file("a", "a")}));
  BuiltImage img = build_image(spec);
  rootfs::ImageInput in = image_input(img, tmp.path() / "in");
  in.layers[0].diff_id = img.layers[0].diff_id;  // the same: fine
  rootfs::ConvertOptions opt;
  opt.output = tmp.path() / "agree.ext4";
  rootfs::convert(in, opt);
  in.layers[0].diff_id = Digest::sha256_of("other");
  Error e = convert_fails(in, {}, tmp.path() / "disagree");
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << e.what();
  EXPECT_NE(std::string(e.what()).find("is not the config's"), std::string::npos) << e.what();
}

// A compressed tarball handed over as a layer (and compressed again) is refused with a message
// that says so, for each mix of gzip and zstd.
TEST_F(Convert, ErrorLayerCompressedTwice) {
  const std::string tar = make_layer_tar({file("a", "content")});
  const std::string zst_mt = "application/vnd.oci.image.layer.v1.tar+zstd";
  struct Case {
    LayerCompression outer, inner;
    std::string mt, says;
  } cases[] = {
      {LayerCompression::kGzip, LayerCompression::kGzip, kGzipMt,
       "compressed twice: its gzip content is gzip again"},
      {LayerCompression::kGzip, LayerCompression::kZstd, kGzipMt,
       "compressed twice: its gzip content is zstd, not a tar"},
      {LayerCompression::kZstd, LayerCompression::kGzip, zst_mt,
       "compressed twice: its zstd content is gzip, not a tar"},
      {LayerCompression::kZstd, LayerCompression::kZstd, zst_mt,
       "compressed twice: its zstd content is zstd again"},
  };
  int i = 0;
  for (const Case& k : cases) {
    std::string inner = compress_bytes(tar, k.inner);
    std::string dir = "twice" + std::to_string(i++);
    rootfs::ImageInput in =
        raw_input({{kTarMt, tar}, {k.mt, compress_bytes(inner, k.outer), Digest::sha256_of(inner)}},
                  tmp.path() / ("raw-" + dir));
    Error e = convert_fails(in, {}, tmp.path() / dir);
    EXPECT_EQ(e.kind(), ErrorKind::kIntegrity) << e.what();
    EXPECT_NE(
        std::string(e.what()).find("layer 2/2 " + in.layers[1].digest.str() + " is " + k.says),
        std::string::npos)
        << e.what();
  }
}

TEST_F(Convert, ErrorMaxSizeOverflow) {
  ImageSpec spec;
  spec.layers.push_back(layer({file("a", std::string(3u << 20, 'a'))}));
  spec.layers.push_back(layer({file("b", std::string(3u << 20, 'b'))}));
  BuiltImage img = build_image(spec);
  rootfs::ConvertOptions opt;
  opt.max_size = 5u << 20;
  Error e = convert_fails(image_input(img, tmp.path() / "in"), opt, tmp.path() / "out");
  EXPECT_EQ(e.kind(), ErrorKind::kLimit) << e.what();
  EXPECT_NE(std::string(e.what()).find(img.layers[1].digest.str()), std::string::npos) << e.what();
  // The written file system is bounded too: content that fits, plus slack that does not.
  rootfs::ConvertOptions opt2;
  opt2.max_size = 7u << 20;
  opt2.extra_space = 16u << 20;
  Error e2 = convert_fails(image_input(img, tmp.path() / "in2"), opt2, tmp.path() / "out2");
  EXPECT_EQ(e2.kind(), ErrorKind::kLimit) << e2.what();
}

TEST_F(Convert, ErrorDecompressionBomb) {
  // 96 MiB of zeros in one file compresses to about 100 KiB; reading stops once 8 MiB is passed.
  ImageSpec spec;
  spec.layers.push_back(layer({file("bomb", std::string(96u << 20, '\0'))}));
  BuiltImage img = build_image(spec);
  ASSERT_LT(img.layers[0].size(), 1u << 20);
  rootfs::ConvertOptions opt;
  opt.max_size = 8u << 20;
  Error e = convert_fails(image_input(img, tmp.path() / "in"), opt, tmp.path() / "out");
  EXPECT_EQ(e.kind(), ErrorKind::kLimit) << e.what();
  EXPECT_NE(std::string(e.what()).find(img.layers[0].digest.str()), std::string::npos) << e.what();
}

TEST_F(Convert, PathsUpToPathMaxConvertAndHostileLayersFailCleanly) {
  // The longest path Linux can use (4095 bytes, 2047 directories deep) converts and checks clean.
  std::string deep;
  for (int i = 0; i < 2046; ++i) deep += "d/";
  ImageSpec ok;
  ok.layers.push_back(layer({file(deep + "xy", "deep"), symlink_to(deep + "l", "xy")}));
  FsTree t = convert_ok(ok);
  EXPECT_EQ(t["/" + deep + "xy"].content, "deep");
  EXPECT_EQ(t["/" + deep + "l"].target, "xy");

  // Refused, naming the layer, leaving nothing: a path past PATH_MAX (10,000 deep), a whiteout
  // of "..", a symlink that expands without end.
  std::string very_deep, bomb;
  for (int i = 0; i < 10000; ++i) very_deep += "a/";
  for (int i = 0; i < 100000; ++i) bomb += "x/";
  struct Case {
    std::string what;
    std::vector<Entry> entries;
    ErrorKind kind;
  };
  std::vector<Case> cases{{"deep", {file(very_deep + "f", "f")}, ErrorKind::kLimit},
                          {"whiteout", {dir("a"), whiteout("a/..")}, ErrorKind::kIntegrity},
                          {"bomb", {symlink_to("x", bomb), file("x/y", "y")}, ErrorKind::kLimit}};
  for (const auto& c : cases) {
    ImageSpec spec;
    spec.layers.push_back(layer({dir("a"), file("a/keep", "k")}));
    spec.layers.push_back(layer(c.entries));
    BuiltImage img = build_image(spec);
    Error e = convert_fails(image_input(img, tmp.path() / ("in-" + c.what)), {},
                            tmp.path() / ("out-" + c.what));
    EXPECT_EQ(e.kind(), c.kind) << c.what << ": " << e.what();
    EXPECT_NE(std::string(e.what()).find(img.layers[1].digest.str()), std::string::npos)
        << e.what();
  }
}

TEST_F(Convert, UnwritableOutputLeavesNothing) {
  ImageSpec spec;
  spec.layers.push_back(layer({file("a", "a")}));
  BuiltImage img = build_image(spec);
  rootfs::ConvertOptions opt;
  opt.output = tmp.path() / "no-such-dir" / "out.ext4";
  EXPECT_THROW(rootfs::convert(image_input(img, tmp.path() / "in"), opt), Error);
  EXPECT_FALSE(fs::exists(tmp.path() / "no-such-dir"));
}

}  // namespace
