// The image builder writes what other implementations accept: its tar layers decode with
// libarchive to exactly the entries described, skopeo reads its OCI layouts and docker-save
// tarballs and pushes them (also as Docker v2s2 and multi-platform), and umoci unpacks them
// with whiteouts applied.
#include "image_builder.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "http.hpp"
#include "img2vm/base/fd.hpp"
#include "process.hpp"
#include "registry.hpp"
#include "skopeo.hpp"

using namespace img2vm;
using namespace img2vm::testing;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Decoded {
  std::string path, link, hardlink, content;
  mode_t type = 0, perm = 0;
  int64_t uid = 0, gid = 0, mtime = 0;
  dev_t rdev = 0;
  std::map<std::string, std::string> xattrs;
};

std::vector<Decoded> decode(const std::string& data) {
  std::vector<Decoded> out;
  archive* a = archive_read_new();
  archive_read_support_format_all(a);
  archive_read_support_filter_all(a);
  EXPECT_EQ(archive_read_open_memory(a, data.data(), data.size()), ARCHIVE_OK);
  archive_entry* e;
  while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
    Decoded d;
    d.path = archive_entry_pathname(e);
    if (d.path.size() > 1 && d.path.back() == '/') d.path.pop_back();
    d.type = archive_entry_filetype(e);
    d.perm = archive_entry_perm(e);
    d.uid = archive_entry_uid(e);
    d.gid = archive_entry_gid(e);
    d.mtime = archive_entry_mtime(e);
    d.rdev = archive_entry_rdev(e);
    if (archive_entry_symlink(e)) d.link = archive_entry_symlink(e);
    if (archive_entry_hardlink(e)) d.hardlink = archive_entry_hardlink(e);
    const char* name;
    const void* val;
    size_t size;
    archive_entry_xattr_reset(e);
    while (archive_entry_xattr_next(e, &name, &val, &size) == ARCHIVE_OK)
      d.xattrs[name] = std::string(static_cast<const char*>(val), size);
    char buf[4096];
    la_ssize_t n;
    while ((n = archive_read_data(a, buf, sizeof buf)) > 0)
      d.content.append(buf, static_cast<size_t>(n));
    out.push_back(d);
  }
  archive_read_free(a);
  return out;
}

TEST(ImageBuilder, LayerTarHoldsExactlyTheDescribedEntries) {
  std::string long_name = "deep/" + std::string(120, 'n') + "/file";
  std::string cap(
      "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 20);
  std::vector<Entry> entries = {
      dir("etc", 0755),
      file("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0644).owner(0, 0),
      file("usr/bin/ping", "ELF", 04755).xattr("security.capability", cap),
      file("home/u/big-ids", "x", 0600).owner(100000, 70000),
      symlink_to("bin/sh", "/usr/bin/busybox"),
      hardlink_to("usr/bin/ping2", "usr/bin/ping"),
      chardev("dev/null", 1, 3),
      blockdev("dev/vda", 254, 0),
      fifo("run/fifo"),
      dir("tmp", 01777),
      whiteout("etc/motd"),
      opaque("var/cache"),
      file(long_name, "long").with_mtime(1234567890),
  };
  auto got = decode(make_layer_tar(entries));
  ASSERT_EQ(got.size(), entries.size());
  std::map<std::string, Decoded> by;
  for (auto& d : got) by[d.path] = d;
  EXPECT_EQ(by["etc/passwd"].content, "root:x:0:0::/root:/bin/sh\n");
  EXPECT_EQ(by["usr/bin/ping"].perm, 04755u);
  EXPECT_EQ(by["usr/bin/ping"].xattrs["security.capability"], cap);
  EXPECT_EQ(by["home/u/big-ids"].uid, 100000);
  EXPECT_EQ(by["home/u/big-ids"].gid, 70000);
  EXPECT_EQ(by["bin/sh"].type, static_cast<mode_t>(AE_IFLNK));
  EXPECT_EQ(by["bin/sh"].link, "/usr/bin/busybox");
  EXPECT_EQ(by["usr/bin/ping2"].hardlink, "usr/bin/ping");
  EXPECT_EQ(by["dev/null"].type, static_cast<mode_t>(AE_IFCHR));
  EXPECT_EQ(by["dev/null"].rdev, makedev(1, 3));
  EXPECT_EQ(by["dev/vda"].type, static_cast<mode_t>(AE_IFBLK));
  EXPECT_EQ(by["run/fifo"].type, static_cast<mode_t>(AE_IFIFO));
  EXPECT_EQ(by["tmp"].perm, 01777u);
  EXPECT_TRUE(by.count("etc/.wh.motd"));
  EXPECT_TRUE(by.count("var/cache/.wh..wh..opq"));
  EXPECT_EQ(by[long_name].content, "long");
  EXPECT_EQ(by[long_name].mtime, 1234567890);
}

TEST(ImageBuilder, DigestsAndCompressionAreConsistent) {
  ImageSpec spec;
  spec.layers.push_back(layer({file("a", "gz")}, LayerCompression::kGzip));
  spec.layers.push_back(layer({file("b", "zst")}, LayerCompression::kZstd));
  spec.layers.push_back(layer({file("c", "plain")}, LayerCompression::kNone));
  BuiltImage img = build_image(spec);
  ASSERT_EQ(img.layers.size(), 3u);
  EXPECT_EQ(static_cast<unsigned char>(img.layers[0].data[0]), 0x1f);
  EXPECT_EQ(static_cast<unsigned char>(img.layers[1].data[0]), 0x28);
  EXPECT_EQ(img.layers[2].data, img.layers[2].tar);
  for (const auto& l : img.layers) {
    EXPECT_EQ(l.digest, Digest::sha256_of(l.data));
    EXPECT_EQ(l.diff_id, Digest::sha256_of(l.tar));
    EXPECT_EQ(decode(l.data).size(), 1u);
  }
  json config = json::parse(img.config.data);
  EXPECT_EQ(config["rootfs"]["diff_ids"][1], img.layers[1].diff_id.str());
  json manifest = json::parse(img.manifest.data);
  EXPECT_EQ(manifest["layers"][1]["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd");
  EXPECT_EQ(manifest["config"]["digest"], img.config.digest.str());
  // Building twice gives the same bytes (fixtures are reproducible).
  EXPECT_EQ(build_image(spec).manifest.digest, img.manifest.digest);
}

TEST(ImageBuilder, SkopeoReadsDockerArchiveAndOciLayout) {
  ImageSpec spec;
  spec.layers.push_back(layer({dir("app"), file("app/run.sh", "#!/bin/sh\necho hi\n", 0755)}));
  spec.layers.push_back(layer({file("app/data", "two")}));
  spec.config.entrypoint = {"/app/run.sh"};
  BuiltImage img = build_image(spec);
  TempDir tmp("builder");
  auto tarball = tmp.path() / "image.tar";
  spec.format = ManifestFormat::kDocker;
  BuiltImage dimg = build_image(spec);
  write_docker_archive(tarball, dimg, {"example.test/app:1"});

  // skopeo turns the docker-save tarball into an OCI layout; the config survives byte for byte.
  auto out = tmp.path() / "oci";
  CommandResult r =
      run_command({"skopeo", "--insecure-policy", "copy", "docker-archive:" + tarball.string(),
                   "oci:" + out.string() + ":copied"});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  json index = json::parse(read_file(out / "index.json"));
  std::string mdigest = index["manifests"][0]["digest"];
  json manifest = json::parse(read_file(out / "blobs" / "sha256" / mdigest.substr(7)));
  EXPECT_EQ(manifest["config"]["digest"], dimg.config.digest.str());
  EXPECT_EQ(manifest["layers"].size(), 2u);

  // And it reads our own OCI layout as-is.
  auto ours = tmp.path() / "ours";
  write_oci_layout(ours, {{"v1", img}});
  r = run_command(
      {"skopeo", "--insecure-policy", "inspect", "--raw", "oci:" + ours.string() + ":v1"});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_EQ(r.out, img.manifest.data);
}

TEST(ImageBuilder, DockerV2s2AndMultiPlatformPushes) {
  Registry reg;
  TempDir tmp("builder");

  // An OCI image pushed as Docker schema 2: skopeo rewrites the manifest but keeps the blobs.
  ImageSpec spec;
  spec.layers.push_back(layer({file("etc/os-release", "ID=test\n")}));
  BuiltImage img = build_image(spec);
  write_oci_layout(tmp.path() / "d", {{"v1", img}});
  skopeo_push("oci:" + (tmp.path() / "d").string() + ":v1", reg, "fmt/docker:v1",
              {"--format", "v2s2"});
  HttpResponse r = get_manifest(reg.base_url(), "fmt/docker", "v1", "", "");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-type"], "application/vnd.docker.distribution.manifest.v2+json");
  json dm = json::parse(r.body);
  EXPECT_EQ(dm["config"]["mediaType"], "application/vnd.docker.container.image.v1+json");
  EXPECT_EQ(dm["config"]["digest"], img.config.digest.str());
  EXPECT_EQ(dm["layers"][0]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip");
  EXPECT_EQ(dm["layers"][0]["digest"], img.layers[0].digest.str());

  std::vector<ImageSpec> plats(3);
  plats[0].config.architecture = "amd64";
  plats[1].config.architecture = "arm64";
  plats[1].config.variant = "v8";
  plats[2].config.architecture = "s390x";
  for (auto& p : plats) p.layers.push_back(layer({file("arch", p.config.architecture + "\n")}));
  BuiltIndex idx = build_index(plats);
  write_oci_layout(tmp.path() / "m", "multi", idx);
  skopeo_push("oci:" + (tmp.path() / "m").string() + ":multi", reg, "fmt/multi:latest",
              {"--all", "--preserve-digests"});
  r = get_manifest(reg.base_url(), "fmt/multi", "latest", "", "");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.body, idx.index.data);
  json j = json::parse(r.body);
  ASSERT_EQ(j["manifests"].size(), 3u);
  EXPECT_EQ(j["manifests"][1]["platform"]["variant"], "v8");
  // Each platform's manifest is there too.
  for (const auto& pimg : idx.images)
    EXPECT_EQ(get_manifest(reg.base_url(), "fmt/multi", pimg.manifest.digest.str(), "", "").status,
              200);
}

TEST(ImageBuilder, UmociUnpacksWithWhiteoutsApplied) {
  ImageSpec spec;
  spec.layers.push_back(
      layer({dir("etc"), file("etc/motd", "welcome"), file("etc/keep", "kept"), dir("var"),
             dir("var/cache"), file("var/cache/old", "old"), symlink_to("etc/link", "keep")}));
  spec.layers.push_back(
      layer({whiteout("etc/motd"), opaque("var/cache"), file("var/cache/new", "new", 0640)}));
  BuiltImage img = build_image(spec);
  TempDir tmp("umoci");
  auto layout = tmp.path() / "layout";
  write_oci_layout(layout, {{"v1", img}});
  auto bundle = tmp.path() / "bundle";
  std::vector<std::string> cmd = {"umoci", "unpack", "--image", layout.string() + ":v1",
                                  bundle.string()};
  if (geteuid() != 0) cmd.insert(cmd.begin() + 2, "--rootless");
  CommandResult r = run_command(cmd);
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  auto root = bundle / "rootfs";
  EXPECT_FALSE(fs::exists(root / "etc/motd"));
  EXPECT_EQ(read_file(root / "etc/keep"), "kept");
  EXPECT_EQ(fs::read_symlink(root / "etc/link"), "keep");
  EXPECT_FALSE(fs::exists(root / "var/cache/old"));
  EXPECT_EQ(read_file(root / "var/cache/new"), "new");
  struct stat st {};
  ASSERT_EQ(lstat((root / "var/cache/new").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
}

}  // namespace
