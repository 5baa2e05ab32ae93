// docker-archive: sources read in place: archives written by skopeo and by the image builder
// (legacy layer.tar and docker 25's OCI layout), whole-archive compression as `docker load`
// accepts it, and hostile archives (compression bombs, huge member counts, escaping paths,
// duplicates, changes after opening) refused without writing anything to disk.
#include "img2vm/registry/docker_archive.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "image_builder.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/registry/image_source.hpp"
#include "img2vm/registry/pull.hpp"
#include "img2vm/registry/store.hpp"
#include "skopeo.hpp"

using namespace img2vm;
using namespace img2vm::registry;
using namespace img2vm::testing;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

ImageSpec two_layer_spec() {
  ImageSpec spec;
  spec.layers.push_back(layer(
      {dir("etc"), file("etc/hostname", "archive\n"), file("etc/big", std::string(300000, 'x'))}));
  spec.layers.push_back(layer({file("etc/second", "two\n")}));
  spec.config.cmd = {"/bin/sh"};
  return spec;
}

std::string read_all(BlobReader& r) {
  std::string got, buf(65536, '\0');
  while (size_t n = r.read(buf.data(), buf.size())) got.append(buf.data(), n);
  return got;
}

struct Failure {
  ErrorKind kind = ErrorKind::kInternal;
  std::string message;
};

template <class F>
Failure failure_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return {e.kind(), e.what()};
  }
  ADD_FAILURE() << "no error";
  return {};
}

std::string da(const fs::path& p, const std::string& ref = "") {
  return "docker-archive:" + p.string() + (ref.empty() ? "" : ":" + ref);
}

// Points $TMPDIR at a new empty directory and watches it: any file or directory created in
// it (as the old unpack-to-a-temp-dir code did) shows up as an inotify event.
class WatchedTmpdir {
 public:
  WatchedTmpdir() : dir_("watched-tmp"), fd_(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) {
    if (const char* t = std::getenv("TMPDIR")) old_ = t;
    ::setenv("TMPDIR", dir_.path().c_str(), 1);
    EXPECT_TRUE(fd_);
    EXPECT_GE(
        ::inotify_add_watch(fd_.get(), dir_.path().c_str(), IN_CREATE | IN_MODIFY | IN_MOVED_TO),
        0);
  }
  ~WatchedTmpdir() {
    if (old_)
      ::setenv("TMPDIR", old_->c_str(), 1);
    else
      ::unsetenv("TMPDIR");
  }
  // True when anything was created or written in the directory since the start.
  bool touched() const {
    char buf[4096];
    return ::read(fd_.get(), buf, sizeof buf) > 0;
  }
  bool empty() const { return fs::is_empty(dir_.path()); }

 private:
  TempDir dir_;
  UniqueFd fd_;
  std::optional<std::string> old_;
};

// A docker archive whose one layer declares `sizes[i]` MiB of zeros each, compressed with gzip
// as concatenated members (about 1 KiB per MiB): a compression bomb of a few MB.
std::string gzip_bomb(const BuiltImage& img, const std::vector<uint64_t>& sizes_mib) {
  std::string config_name = img.config.digest.hex() + ".json";
  json layers = json::array();
  for (size_t i = 0; i < sizes_mib.size(); ++i)
    layers.push_back("bomb" + std::to_string(i) + "/layer.tar");
  json manifest = json::array(
      {{{"Config", config_name}, {"RepoTags", {"example.com/bomb:1"}}, {"Layers", layers}}});
  const std::string zeros = compress(std::string(1u << 20, '\0'), "gzip");
  std::string out;
  for (size_t i = 0; i < sizes_mib.size(); ++i) {
    std::vector<Entry> before;
    if (i == 0)
      before = {file("manifest.json", manifest.dump()), file(config_name, img.config.data)};
    out += compress(tar_prefix(before, layers[i].get<std::string>(), sizes_mib[i] << 20), "gzip");
    for (uint64_t k = 0; k < sizes_mib[i]; ++k) out += zeros;
  }
  return out + compress(std::string(1024, '\0'), "gzip");
}

// One hand-made ustar header (typeflag `type`, `size` bytes of data follow).
std::string ustar_header(const std::string& name, char type, uint64_t size) {
  std::string h(512, '\0');
  auto put = [&](size_t off, size_t len, const std::string& v) {
    h.replace(off, std::min(len, v.size()), v.substr(0, len));
  };
  auto octal = [](uint64_t v, int width) {
    char b[32];
    std::snprintf(b, sizeof b, "%0*llo", width, static_cast<unsigned long long>(v));
    return std::string(b);
  };
  put(0, 100, name);
  put(100, 8, octal(0644, 7));
  put(108, 8, octal(0, 7));
  put(116, 8, octal(0, 7));
  put(124, 12, octal(size, 11));
  put(136, 12, octal(0, 11));
  put(148, 8, std::string(8, ' '));
  h[156] = type;
  put(257, 8,
      std::string("ustar\0"
                  "00",
                  8));
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  put(148, 8, octal(sum, 6) + std::string(1, '\0') + " ");
  return h;
}

}  // namespace

// Archives written by another implementation (skopeo), plain and compressed as `docker save |
// gzip` (or bzip2, xz, zstd) makes them, read to the same image; a pull from a compressed one
// (blobs read concurrently) lands the same image in the store.
TEST(DockerArchive, SkopeoWrittenArchivePlainAndCompressed) {
  BuiltImage img = build_image(two_layer_spec());
  TempDir dir("da");
  write_oci_layout(dir.path() / "layout", {{"v1", img}});
  fs::path plain = dir.path() / "image.tar";
  skopeo_copy("oci:" + (dir.path() / "layout").string() + ":v1",
              "docker-archive:" + plain.string() + ":example.com/test/skopeo:1");

  auto base = open_image_source(da(plain));
  EXPECT_EQ(base->name(), "example.com/test/skopeo:1");
  EXPECT_EQ(base->config_bytes(), img.config.data);
  EXPECT_EQ(base->platform().str(), "linux/amd64");
  ASSERT_EQ(base->manifest().layers.size(), 2u);
  EXPECT_FALSE(base->blob_path(base->manifest().layers[0]));  // the layers stay inside the tar
  for (size_t i = 0; i < 2; ++i) {
    const Descriptor& d = base->manifest().layers[i];
    // skopeo stores the layers uncompressed (diff ids) or as pushed; either way the bytes are one
    // of them.
    EXPECT_TRUE(d.digest == img.layers[i].diff_id || d.digest == img.layers[i].digest)
        << d.digest.str();
    auto rd = base->open_blob(d);
    std::string got = read_all(*rd);
    EXPECT_TRUE(got == img.layers[i].tar || got == img.layers[i].data);
  }

  const std::string tar = read_file(plain);
  for (const char* filter : {"gzip", "bzip2", "xz", "zstd"}) {
    SCOPED_TRACE(filter);
    fs::path packed = dir.path() / (std::string("image.tar.") + filter);
    write_file_atomic(packed, compress(tar, filter));
    auto src = open_image_source(da(packed, "example.com/test/skopeo:1"));
    EXPECT_EQ(src->manifest_digest(), base->manifest_digest());
    EXPECT_EQ(src->manifest_bytes(), base->manifest_bytes());
    EXPECT_EQ(src->config_bytes(), img.config.data);
    for (const Descriptor& d : src->manifest().layers) {
      auto a = src->open_blob(d);
      auto b = base->open_blob(d);
      EXPECT_EQ(read_all(*a), read_all(*b));
    }
  }

  TempDir home("home");
  Store store(home.path());
  PullOptions o;
  o.jobs = 4;
  PullResult p = pull(store, da(dir.path() / "image.tar.gzip"), o);
  EXPECT_EQ(p.name, "example.com/test/skopeo:1");
  EXPECT_EQ(p.manifest_digest, base->manifest_digest());
  auto stored = open_image(store, p.name);
  EXPECT_EQ(stored->config_bytes(), img.config.data);
  for (const Descriptor& d : stored->manifest().layers) {
    auto a = stored->open_blob(d);
    auto b = base->open_blob(d);
    EXPECT_EQ(read_all(*a), read_all(*b));
  }
}

// docker 25 and later save an OCI image layout with manifest.json pointing into blobs/sha256;
// tags select among images; the only image is the default.
TEST(DockerArchive, Docker25OciLayoutArchiveAndTags) {
  BuiltImage img = build_image(two_layer_spec());
  TempDir dir("da");
  DockerArchiveOptions oci;
  oci.oci_layout = true;
  write_docker_archive(dir.path() / "oci.tar", img,
                       {"example.com/test/oci:1", "example.com/test/oci:2"}, oci);
  for (const std::string ref : {"", "example.com/test/oci:2"}) {
    auto src = open_image_source(da(dir.path() / "oci.tar", ref));
    EXPECT_EQ(src->name(), ref.empty() ? "example.com/test/oci:1" : ref);
    EXPECT_EQ(src->config_bytes(), img.config.data);
    ASSERT_EQ(src->manifest().layers.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      const Descriptor& d = src->manifest().layers[i];
      EXPECT_EQ(d.digest, img.layers[i].diff_id);
      EXPECT_EQ(d.media_type, "application/vnd.oci.image.layer.v1.tar");
      auto rd = src->open_blob(d);
      EXPECT_EQ(read_all(*rd), img.layers[i].tar);
    }
  }
  Failure f =
      failure_of([&] { open_image_source(da(dir.path() / "oci.tar", "example.com/test/oci:3")); });
  EXPECT_EQ(f.kind, ErrorKind::kNotFound);
  EXPECT_NE(f.message.find("tag not found"), std::string::npos) << f.message;
  EXPECT_NE(f.message.find("example.com/test/oci:2"), std::string::npos) << f.message;

  // The legacy layout of the same image is the same image manifest (layers as docker saves them).
  write_docker_archive(dir.path() / "legacy.tar", img, {"example.com/test/oci:1"});
  EXPECT_EQ(open_image_source(da(dir.path() / "legacy.tar"))->manifest_digest(),
            open_image_source(da(dir.path() / "oci.tar"))->manifest_digest());
}

// A gzip bomb (a few MB expanding to 2 GiB in one member) is refused before its data is
// decompressed, and nothing is written to $TMPDIR (the old code unpacked it there).
TEST(DockerArchive, CompressionBombIsRefusedWithoutWritingToDisk) {
  BuiltImage img = build_image(two_layer_spec());
  TempDir dir("da");
  fs::path bomb = dir.path() / "bomb.tar.gz";
  write_file_atomic(bomb, gzip_bomb(img, {2048}));
  ASSERT_LT(fs::file_size(bomb), 8u << 20);
  WatchedTmpdir tmp;
  Failure f = failure_of([&] { open_image_source(da(bomb)); });
  EXPECT_EQ(f.kind, ErrorKind::kLimit) << f.message;
  EXPECT_NE(f.message.find("expands to more than 256 MiB"), std::string::npos) << f.message;
  EXPECT_FALSE(tmp.touched());
  EXPECT_TRUE(tmp.empty());
}

// The bound is on the whole stream: members each under it but together over it are refused
// when the total would pass it.
TEST(DockerArchive, CompressionBoundCoversTheWholeStream) {
  BuiltImage img = build_image(two_layer_spec());
  TempDir dir("da");
  fs::path bomb = dir.path() / "bombs.tar.gz";
  write_file_atomic(bomb, gzip_bomb(img, {100, 100, 100}));
  WatchedTmpdir tmp;
  Failure f = failure_of([&] { open_image_source(da(bomb)); });
  EXPECT_EQ(f.kind, ErrorKind::kLimit) << f.message;
  EXPECT_NE(f.message.find("expands to more than"), std::string::npos) << f.message;
  EXPECT_FALSE(tmp.touched());

  // Within the bound the same construction is an ordinary (if sparse-looking) image.
  fs::path small = dir.path() / "small.tar.gz";
  write_file_atomic(small, gzip_bomb(img, {1, 2}));
  auto src = open_image_source(da(small));
  ASSERT_EQ(src->manifest().layers.size(), 2u);
  EXPECT_EQ(src->manifest().layers[1].size, 2 << 20);
  auto rd = src->open_blob(src->manifest().layers[1]);
  EXPECT_EQ(read_all(*rd), std::string(2u << 20, '\0'));
}

// Bytes that libarchive consumes inside one header read (chains of GNU long-name headers, up to
// 1 MiB each) count against the bound too.
TEST(DockerArchive, SpecialHeadersCountAgainstTheBound) {
  // Each long name is a short one padded with NULs to 1 MiB; the last one before a header wins.
  auto longname = [](const std::string& name) {
    return compress(ustar_header("././@LongLink", 'L', 1u << 20) + name +
                        std::string((1u << 20) - name.size(), '\0'),
                    "gzip");
  };
  const std::string filler = longname("n");
  std::string gz;
  for (int entry = 0; entry < 10; ++entry) {
    for (int j = 0; j < 29; ++j) gz += filler;
    gz += longname("n" + std::to_string(entry));
    gz += compress(ustar_header("f" + std::to_string(entry), '0', 0), "gzip");
  }
  gz += compress(std::string(1024, '\0'), "gzip");
  TempDir dir("da");
  write_file_atomic(dir.path() / "longnames.tar.gz", gz);
  WatchedTmpdir tmp;
  Failure f = failure_of([&] { open_image_source(da(dir.path() / "longnames.tar.gz")); });
  EXPECT_EQ(f.kind, ErrorKind::kLimit) << f.message;
  EXPECT_NE(f.message.find("expands to more than 256 MiB"), std::string::npos) << f.message;
  EXPECT_FALSE(tmp.touched());
}

TEST(DockerArchive, HugeMemberCountIsRefused) {
  BuiltImage img = build_image(two_layer_spec());
  DockerArchiveOptions o;
  for (int i = 0; i < 16400; ++i) o.extra_entries.push_back(file("junk/" + std::to_string(i), ""));
  TempDir dir("da");
  write_docker_archive(dir.path() / "many.tar", img, {"example.com/test/many:1"}, o);
  WatchedTmpdir tmp;
  Failure f = failure_of([&] { open_image_source(da(dir.path() / "many.tar")); });
  EXPECT_EQ(f.kind, ErrorKind::kLimit) << f.message;
  EXPECT_NE(f.message.find("more than 16384 members"), std::string::npos) << f.message;
  EXPECT_FALSE(tmp.touched());
}

// Member paths that would escape the archive are refused; manifest.json paths, links and hard
// links that point outside it find nothing; nothing is created anywhere.
TEST(DockerArchive, EscapingPathsAreRefused) {
  BuiltImage img = build_image(two_layer_spec());
  TempDir dir("da");
  fs::path work = dir.path() / "work";
  fs::create_directories(work);
  write_file_atomic(dir.path() / "outside.tar", img.layers[0].tar);
  WatchedTmpdir tmp;
  for (const std::string bad :
       {"../escape", "/abs/escape", "a/../../escape", "./../escape", "x/./../../escape"}) {
    SCOPED_TRACE(bad);
    DockerArchiveOptions o;
    o.extra_entries = {file(bad, "evil")};
    write_docker_archive(work / "bad.tar", img, {"example.com/test/bad:1"}, o);
    Failure f = failure_of([&] { open_image_source(da(work / "bad.tar")); });
    EXPECT_EQ(f.kind, ErrorKind::kIntegrity);
    EXPECT_NE(f.message.find("unsafe member path"), std::string::npos) << f.message;
  }
  // manifest.json naming files outside the archive, through .., an absolute path, a symlink
  // member and a hard link member.
  std::string config_name = img.config.digest.hex() + ".json";
  for (const std::string& layer : std::vector<std::string>{
           "../outside.tar", (dir.path() / "outside.tar").string(), "up/outside.tar", "hard"}) {
    SCOPED_TRACE(layer);
    json manifest = json::array(
        {{{"Config", config_name}, {"RepoTags", {"example.com/test/bad:1"}}, {"Layers", {layer}}}});
    write_file_atomic(
        work / "ref.tar",
        make_layer_tar({file("manifest.json", manifest.dump()), file(config_name, img.config.data),
                        symlink_to("up", ".."), hardlink_to("hard", "../outside.tar")}));
    Failure f = failure_of([&] { open_image_source(da(work / "ref.tar")); });
    EXPECT_EQ(f.kind, ErrorKind::kIntegrity);
    EXPECT_NE(f.message.find("missing member"), std::string::npos) << f.message;
  }
  EXPECT_FALSE(fs::exists(dir.path() / "escape"));
  EXPECT_FALSE(fs::exists("/abs"));
  EXPECT_FALSE(tmp.touched());
}

// A member that appears twice is ambiguous (extracting would keep the last one silently).
TEST(DockerArchive, DuplicateMembersAreRefused) {
  BuiltImage img = build_image(two_layer_spec());
  DockerArchiveOptions o;
  o.extra_entries = {file("manifest.json", "[]")};
  TempDir dir("da");
  write_docker_archive(dir.path() / "dup.tar", img, {"example.com/test/dup:1"}, o);
  Failure f = failure_of([&] { open_image_source(da(dir.path() / "dup.tar")); });
  EXPECT_EQ(f.kind, ErrorKind::kIntegrity);
  EXPECT_NE(f.message.find("member manifest.json appears twice"), std::string::npos) << f.message;
}

// Blobs are read from the file when asked for, and checked: a change to the archive after it
// was opened is an integrity error, not other bytes.
TEST(DockerArchive, ChangesAfterOpeningAreDetected) {
  BuiltImage img = build_image(two_layer_spec());
  TempDir dir("da");
  fs::path tar = dir.path() / "image.tar";
  write_docker_archive(tar, img, {"example.com/test/changed:1"});
  auto src = open_image_source(da(tar));
  const Descriptor layer = src->manifest().layers[0];
  std::string bytes = read_file(tar);
  size_t at = bytes.find(img.layers[0].tar);
  ASSERT_NE(at, std::string::npos);
  {
    UniqueFd fd = open_file(tar, O_WRONLY);
    pwrite_all(fd.get(), "Z", at + 1000, "archive");
  }
  auto rd = src->open_blob(layer);
  Failure f = failure_of([&] { read_all(*rd); });
  EXPECT_EQ(f.kind, ErrorKind::kIntegrity);
  EXPECT_NE(f.message.find(layer.digest.str()), std::string::npos) << f.message;
}

TEST(DockerArchive, MalformedArchivesAreOneClearError) {
  BuiltImage img = build_image(two_layer_spec());
  TempDir dir("da");
  write_docker_archive(dir.path() / "image.tar", img, {"example.com/test/m:1"});
  std::string tar = read_file(dir.path() / "image.tar");

  write_file_atomic(dir.path() / "twice.tar.gz", compress(compress(tar, "gzip"), "gzip"));
  Failure f = failure_of([&] { open_image_source(da(dir.path() / "twice.tar.gz")); });
  EXPECT_EQ(f.kind, ErrorKind::kUnsupported);
  EXPECT_NE(f.message.find("compressed more than once"), std::string::npos) << f.message;

  write_file_atomic(dir.path() / "cut.tar", tar.substr(0, tar.size() / 2));
  f = failure_of([&] { open_image_source(da(dir.path() / "cut.tar")); });
  EXPECT_EQ(f.kind, ErrorKind::kIntegrity) << f.message;

  write_file_atomic(dir.path() / "cut.tar.gz", compress(tar, "gzip").substr(0, 100));
  f = failure_of([&] { open_image_source(da(dir.path() / "cut.tar.gz")); });
  EXPECT_EQ(f.kind, ErrorKind::kIntegrity) << f.message;

  f = failure_of([&] { open_image_source(da("/dev/zero")); });
  EXPECT_EQ(f.kind, ErrorKind::kInvalidArgument);
  EXPECT_NE(f.message.find("not a regular file"), std::string::npos) << f.message;

  write_file_atomic(dir.path() / "empty.tar", "");
  f = failure_of([&] { open_image_source(da(dir.path() / "empty.tar")); });
  EXPECT_NE(f.message.find("empty"), std::string::npos) << f.message;
}
