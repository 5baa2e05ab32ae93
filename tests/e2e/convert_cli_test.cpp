// `img2vm convert` end to end: an image pushed by skopeo to a real registry is pulled and
// flattened into an ext4 that e2fsck accepts, with our init and the image's config injected;
// the rootfs cache answers a second conversion; a compressed docker archive converts to the same
// file system as the plain one; bad input is one line and leaves no file.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "image_builder.hpp"
#include "img2vm/base/fd.hpp"
#include "process.hpp"
#include "registry.hpp"
#include "skopeo.hpp"

using namespace img2vm;
using namespace img2vm::testing;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

CommandResult img2vm_cmd(const TempDir& home, std::vector<std::string> args) {
  const char* b = std::getenv("IMG2VM_BIN");
  args.insert(args.begin(), b ? b : "img2vm");
  RunOptions o;
  o.env["IMG2VM_HOME"] = home.path().string();
  return run_command(args, o);
}

std::string debugfs(const fs::path& img, const std::string& request) {
  CommandResult r = run_command({"debugfs", "-R", request, img.string()});
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  return r.out + r.err;
}

TEST(ConvertCli, RegistryImageToCheckedExt4WithInitAndConfig) {
  Registry reg;
  ImageSpec spec;
  spec.layers.push_back(layer({dir("bin"), file("bin/app", "#!/bin/sh\necho hi\n", 0755), dir("etc"),
                               file("etc/motd", "hello\n")}));
  spec.layers.push_back(layer({whiteout("etc/motd"), file("etc/added", "two\n")}, LayerCompression::kZstd));
  spec.config.entrypoint = {"/bin/app"};
  spec.config.env = {"GREETING=a b=c"};
  spec.config.working_dir = "/srv";
  BuiltImage img = build_image(spec);
  TempDir tmp("convert-e2e");
  write_oci_layout(tmp.path() / "layout", {{"v1", img}});
  skopeo_push("oci:" + (tmp.path() / "layout").string() + ":v1", reg, "e2e/app:v1");

  TempDir home("img2vm-home");
  auto out = tmp.path() / "rootfs.ext4";
  std::string ref = reg.host() + "/e2e/app:v1";
  CommandResult r = img2vm_cmd(home, {"convert", "--json", ref, "-o", out.string()});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  json j = json::parse(r.out);
  EXPECT_EQ(j["manifest_digest"], img.manifest.digest.str());
  EXPECT_EQ(j["output"], out.string());
  EXPECT_EQ(j["layers"], 2);

  CommandResult fsck = run_command({"e2fsck", "-fn", out.string()});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.describe();
  EXPECT_NE(debugfs(out, "cat /etc/added").find("two\n"), std::string::npos);
  EXPECT_NE(debugfs(out, "stat /etc/motd").find("not found"), std::string::npos);
  CommandResult cat = run_command({"debugfs", "-R", "cat /.img2vm/config.json", out.string()});
  std::string config = cat.out;
  json cfg = json::parse(config);
  EXPECT_EQ(cfg["entrypoint"], json::array({"/bin/app"}));
  EXPECT_EQ(cfg["env"], json::array({"GREETING=a b=c"}));
  EXPECT_EQ(cfg["working_dir"], "/srv");
  EXPECT_NE(debugfs(out, "stat /.img2vm/init").find("Mode:  0755"), std::string::npos);

  // Without -o the result lands in the rootfs cache; the second call is a cache hit that
  // returns the same file.
  CommandResult c1 = img2vm_cmd(home, {"convert", "--json", ref});
  ASSERT_EQ(c1.exit_code, 0) << c1.describe();
  CommandResult c2 = img2vm_cmd(home, {"convert", "--json", ref});
  ASSERT_EQ(c2.exit_code, 0) << c2.describe();
  json j1 = json::parse(c1.out), j2 = json::parse(c2.out);
  EXPECT_FALSE(j1["cached"].get<bool>());
  EXPECT_TRUE(j2["cached"].get<bool>());
  EXPECT_EQ(j1["output"], j2["output"]);
  EXPECT_EQ(fs::path(j1["output"].get<std::string>()).parent_path(), home.path() / "rootfs");
  // The cached file is byte-identical to the explicit conversion (reproducible output).
  EXPECT_EQ(read_file(j1["output"].get<std::string>()), read_file(out));
}

// A `docker save | gzip` archive (written by skopeo, compressed as a whole) converts to the
// same file system as the OCI layout it came from: its layers are read out of the tar.
TEST(ConvertCli, CompressedDockerArchiveToExt4) {
  ImageSpec spec;
  spec.layers.push_back(layer({dir("etc"), file("etc/motd", "from an archive\n"),
                               file("etc/big", std::string(200000, 'b'))}));
  spec.layers.push_back(layer({file("etc/added", "two\n")}));
  BuiltImage img = build_image(spec);
  TempDir tmp("convert-e2e");
  write_oci_layout(tmp.path() / "layout", {{"v1", img}});
  fs::path tar = tmp.path() / "image.tar";
  skopeo_copy("oci:" + (tmp.path() / "layout").string() + ":v1",
              "docker-archive:" + tar.string() + ":example.com/e2e/archive:1");
  write_file_atomic(tmp.path() / "image.tar.gz", compress(read_file(tar), "gzip"));

  TempDir home("img2vm-home");
  auto from_tar = tmp.path() / "tar.ext4";
  auto from_gz = tmp.path() / "gz.ext4";
  CommandResult a = img2vm_cmd(
      home, {"convert", "--json", "docker-archive:" + tar.string(), "-o", from_tar.string()});
  ASSERT_EQ(a.exit_code, 0) << a.describe();
  CommandResult b = img2vm_cmd(
      home, {"convert", "--json", "docker-archive:" + (tmp.path() / "image.tar.gz").string(), "-o",
             from_gz.string()});
  ASSERT_EQ(b.exit_code, 0) << b.describe();
  EXPECT_EQ(json::parse(a.out)["manifest_digest"], json::parse(b.out)["manifest_digest"]);
  EXPECT_EQ(json::parse(b.out)["layers"], 2);
  CommandResult fsck = run_command({"e2fsck", "-fn", from_gz.string()});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.describe();
  EXPECT_NE(debugfs(from_gz, "cat /etc/motd").find("from an archive\n"), std::string::npos);
  EXPECT_NE(debugfs(from_gz, "cat /etc/added").find("two\n"), std::string::npos);
  EXPECT_EQ(read_file(from_tar), read_file(from_gz));
}

TEST(ConvertCli, ErrorsAreOneLineAndLeaveNoOutput) {
  TempDir home("img2vm-home");
  TempDir tmp("convert-e2e");
  auto out = tmp.path() / "never.ext4";

  CommandResult bad_ref = img2vm_cmd(home, {"convert", "Not_A/Valid::ref", "-o", out.string()});
  EXPECT_EQ(bad_ref.exit_code, 1) << bad_ref.describe();
  EXPECT_EQ(std::count(bad_ref.err.begin(), bad_ref.err.end(), '\n'), 1) << bad_ref.err;

  // A layer whose blob was corrupted after the layout was written.
  ImageSpec spec;
  spec.layers.push_back(layer({file("a", std::string(4096, 'a'))}));
  BuiltImage img = build_image(spec);
  write_oci_layout(tmp.path() / "layout", {{"v1", img}});
  auto blob = tmp.path() / "layout" / "blobs" / "sha256" / img.layers[0].digest.hex();
  std::string bytes = read_file(blob);
  bytes[bytes.size() / 2] ^= 0x55;
  fs::permissions(blob, fs::perms::owner_write, fs::perm_options::add);
  write_file_atomic(blob, bytes);
  CommandResult corrupt = img2vm_cmd(home, {"convert", "oci:" + (tmp.path() / "layout").string() + ":v1", "-o", out.string()});
  EXPECT_EQ(corrupt.exit_code, 1) << corrupt.describe();
  EXPECT_NE(corrupt.err.find(img.layers[0].digest.str()), std::string::npos) << corrupt.err;
  EXPECT_EQ(std::count(corrupt.err.begin(), corrupt.err.end(), '\n'), 1) << corrupt.err;

  CommandResult bad_size = img2vm_cmd(home, {"convert", "oci:" + (tmp.path() / "layout").string() + ":v1", "-o",
                                             out.string(), "--size", "12Q"});
  EXPECT_EQ(bad_size.exit_code, 1) << bad_size.describe();
  EXPECT_NE(bad_size.err.find("--size"), std::string::npos) << bad_size.err;

  // A compression bomb in a docker archive: one line, refused before it is decompressed.
  std::string bomb = compress(tar_prefix({}, "layer.tar", 1ull << 31), "gzip");
  const std::string zeros = compress(std::string(1u << 20, '\0'), "gzip");
  for (int i = 0; i < 2048; ++i) bomb += zeros;
  write_file_atomic(tmp.path() / "layout" / "bomb.tar.gz",
                    bomb + compress(std::string(1024, '\0'), "gzip"));
  CommandResult bombed = img2vm_cmd(
      home, {"convert", "docker-archive:" + (tmp.path() / "layout" / "bomb.tar.gz").string(), "-o",
             out.string()});
  EXPECT_EQ(bombed.exit_code, 1) << bombed.describe();
  EXPECT_NE(bombed.err.find("expands to more than"), std::string::npos) << bombed.err;
  EXPECT_EQ(std::count(bombed.err.begin(), bombed.err.end(), '\n'), 1) << bombed.err;

  EXPECT_FALSE(fs::exists(out));
  for (const auto& e : fs::directory_iterator(tmp.path())) EXPECT_EQ(e.path().filename(), "layout") << e.path();
}

}  // namespace
