// `img2vm convert` end to end: an image pushed by skopeo to a real registry is pulled and
// flattened into an ext4 that e2fsck accepts, with our init and the image's config injected;
// the rootfs cache answers a second conversion; a compressed docker archive converts to the same
// file system as the plain one; bad input is one line and leaves no file (nor anything in the
// rootfs cache), from every kind of source; layers umoci made from compressed tarballs are
// refused as compressed twice.
#include <gtest/gtest.h>

#include <algorithm>
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

// The files under `dir` (recursively; none when it does not exist).
std::vector<std::string> files_under(const fs::path& dir) {
  std::vector<std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (!e.is_directory()) out.push_back(e.path().string());
  return out;
}

std::string debugfs(const fs::path& img, const std::string& request) {
  CommandResult r = run_command({"debugfs", "-R", request, img.string()});
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  return r.out + r.err;
}

TEST(ConvertCli, RegistryImageToCheckedExt4WithInitAndConfig) {
  Registry reg;
  ImageSpec spec;
  spec.layers.push_back(layer({dir("bin"), file("bin/app", "#!/bin/sh\necho hi\n", 0755),
                               dir("etc"), file("etc/motd", "hello\n")}));
  spec.layers.push_back(
      layer({whiteout("etc/motd"), file("etc/added", "two\n")}, LayerCompression::kZstd));
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
  CommandResult corrupt = img2vm_cmd(
      home, {"convert", "oci:" + (tmp.path() / "layout").string() + ":v1", "-o", out.string()});
  EXPECT_EQ(corrupt.exit_code, 1) << corrupt.describe();
  EXPECT_NE(corrupt.err.find(img.layers[0].digest.str()), std::string::npos) << corrupt.err;
  EXPECT_EQ(std::count(corrupt.err.begin(), corrupt.err.end(), '\n'), 1) << corrupt.err;

  CommandResult bad_size =
      img2vm_cmd(home, {"convert", "oci:" + (tmp.path() / "layout").string() + ":v1", "-o",
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
  for (const auto& e : fs::directory_iterator(tmp.path()))
    EXPECT_EQ(e.path().filename(), "layout") << e.path();
}

TEST(ConvertCli, HostileLayersFailFastWithBoundedMemory) {
  // From the issue-14 review: one entry 10,000 directories deep (the writer's recursion crashed
  // with SIGSEGV, memory grew with depth squared) and a symlink x -> x/x/... of 100,000
  // components with an entry under it (827 MB from a 386-byte layer). Each is now one line and
  // exit code 1, and the process's peak memory stays small.
  std::string deep, bomb;
  for (int i = 0; i < 10000; ++i) deep += "a/";
  for (int i = 0; i < 100000; ++i) bomb += "x/";
  struct Case {
    std::string name;
    std::vector<Entry> entries;
    std::string says;
  };
  for (const Case& c :
       std::vector<Case>{{"deep", {file(deep + "f", "f")}, "PATH_MAX"},
                         {"bomb", {symlink_to("x", bomb), file("x/y", "y")}, "symbolic links"}}) {
    ImageSpec spec;
    spec.layers.push_back(layer(c.entries));
    BuiltImage img = build_image(spec);
    ASSERT_LT(img.layers[0].size(), 4096u) << c.name;  // a few hundred bytes gzipped
    TempDir home("img2vm-home");
    TempDir tmp("convert-e2e");
    write_oci_layout(tmp.path() / "layout", {{"v1", img}});
    auto out = tmp.path() / "out.ext4";
    CommandResult r = img2vm_cmd(
        home, {"convert", "oci:" + (tmp.path() / "layout").string() + ":v1", "-o", out.string()});
    EXPECT_EQ(r.exit_code, 1) << c.name << ": " << r.describe();
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(img.layers[0].digest.str()), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
    EXPECT_LT(r.max_rss_kb, 128 * 1024) << c.name << ": peak RSS " << r.max_rss_kb << " KiB";
    EXPECT_FALSE(fs::exists(out));
  }
}

TEST(ConvertCli, WrongDiffIdFailsFromEverySourceAndLeavesNothing) {
  Registry reg;
  ImageSpec spec;
  spec.layers.push_back(layer({file("a", std::string(100000, 'a'))}));
  spec.layers.push_back(layer({file("b", "b")}, LayerCompression::kZstd));
  BuiltImage good = build_image(spec);
  const Digest wrong = Digest::sha256_of("not the layer");
  spec.diff_ids = std::vector<std::string>{good.layers[0].diff_id.str(), wrong.str()};
  BuiltImage img = build_image(spec);
  TempDir tmp("convert-e2e");
  write_oci_layout(tmp.path() / "layout", {{"v1", img}});
  skopeo_push("oci:" + (tmp.path() / "layout").string() + ":v1", reg, "e2e/bad-diff-id:v1");
  // docker save writes plain layers; their diff_ids are checked all the same.
  ImageSpec plain = spec;
  for (auto& l : plain.layers) l.compression = LayerCompression::kNone;
  write_docker_archive(tmp.path() / "image.tar", build_image(plain), {"example.com/bad:1"});

  const std::string expected = "img2vm: layer 2: diff_id mismatch: config says " + wrong.str() +
                               ", content is " + good.layers[1].diff_id.str() + "\n";
  TempDir home("img2vm-home");
  CommandResult pull =
      img2vm_cmd(home, {"pull", reg.host() + "/e2e/bad-diff-id:v1"});  // pull checks no diff_ids
  ASSERT_EQ(pull.exit_code, 0) << pull.describe();
  auto out = tmp.path() / "out" / "rootfs.ext4";
  fs::create_directories(out.parent_path());
  for (const std::string& ref :
       {reg.host() + "/e2e/bad-diff-id:v1", "oci:" + (tmp.path() / "layout").string() + ":v1",
        "docker-archive:" + (tmp.path() / "image.tar").string()}) {
    CommandResult r = img2vm_cmd(home, {"convert", ref, "-o", out.string()});
    EXPECT_EQ(r.exit_code, 1) << ref << ": " << r.describe();
    EXPECT_EQ(r.err, expected) << ref;
    EXPECT_TRUE(fs::is_empty(out.parent_path()))
        << ref << ": " << ::testing::PrintToString(files_under(out.parent_path()));
    // Into the rootfs cache (what `img2vm run` converts into): nothing is left there either.
    CommandResult c = img2vm_cmd(home, {"convert", ref});
    EXPECT_EQ(c.exit_code, 1) << ref << ": " << c.describe();
    EXPECT_EQ(c.err, expected) << ref;
    EXPECT_TRUE(files_under(home.path() / "rootfs").empty())
        << ref << ": " << ::testing::PrintToString(files_under(home.path() / "rootfs"));
  }

  // A config that lists fewer diff_ids than there are layers.
  ImageSpec none = spec;
  none.omit_rootfs = true;
  write_oci_layout(tmp.path() / "layout", {{"none", build_image(none)}});
  CommandResult r =
      img2vm_cmd(home, {"convert", "oci:" + (tmp.path() / "layout").string() + ":none"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_EQ(r.err,
            "img2vm: the image config lists 0 diff_ids (rootfs.diff_ids) for 2 layers: it needs "
            "one per layer\n");
  EXPECT_TRUE(files_under(home.path() / "rootfs").empty())
      << ::testing::PrintToString(files_under(home.path() / "rootfs"));
}

// Layers added with `umoci raw add-layer` (which gzips what it is given, and records the
// diff_id of what it was given): a plain tar converts; a .tar.gz or .tar.zst is compressed
// twice and refused, as containerd refuses it.
TEST(ConvertCli, UmociLayersFromCompressedTarballsAreRefused) {
  if (find_program("umoci").empty() || find_program("tar").empty() || find_program("zstd").empty())
    GTEST_SKIP() << "umoci, tar or zstd not installed";
  TempDir tmp("convert-umoci");
  const fs::path layout = tmp.path() / "layout", tree = tmp.path() / "tree";
  fs::create_directories(tree / "etc");
  write_file_atomic(tree / "etc" / "greeting", "hello from umoci\n");
  auto sh = [&](const std::string& script) {
    RunOptions o;
    o.cwd = tmp.path();
    CommandResult r = run_command({"sh", "-ec", script}, o);
    ASSERT_EQ(r.exit_code, 0) << script << ": " << r.describe();
  };
  sh("umoci init --layout layout");
  sh("tar -C tree -cf layer.tar . && tar -C tree -czf layer.tar.gz . && tar -C tree -cf - . | zstd "
     "-q > layer.tar.zst");
  for (std::string tag : {"tar", "tar.gz", "tar.zst"})
    sh("umoci new --image layout:" + tag + " && umoci raw add-layer --image layout:" + tag +
       " layer." + tag);

  TempDir home("img2vm-home");
  const std::string src = "oci:" + layout.string() + ":";
  CommandResult ok =
      img2vm_cmd(home, {"convert", src + "tar", "-o", (tmp.path() / "ok.ext4").string()});
  ASSERT_EQ(ok.exit_code, 0) << ok.describe();
  EXPECT_NE(debugfs(tmp.path() / "ok.ext4", "cat /etc/greeting").find("hello from umoci"),
            std::string::npos);

  struct Case {
    std::string tag, says;
  } cases[] = {{"tar.gz", "is compressed twice: its gzip content is gzip again"},
               {"tar.zst", "is compressed twice: its gzip content is zstd, not a tar"}};
  for (const Case& k : cases) {
    auto out = tmp.path() / (k.tag + ".ext4");
    CommandResult r = img2vm_cmd(home, {"convert", src + k.tag, "-o", out.string()});
    EXPECT_EQ(r.exit_code, 1) << r.describe();
    EXPECT_NE(r.err.find("img2vm: layer 1/1 sha256:"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(k.says), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_FALSE(fs::exists(out));
  }
}

}  // namespace

// Commands that need no registry never load libcurl (opened on the first transfer: GnuTLS,
// Kerberos, LDAP and the rest come with it), nor the libxml2 and ICU of the shared libarchive
// (libarchive.a is linked): together about 15 ms of every command's start. Nor libnftables and
// the five libraries it brings (opened when a tap network is set up), nor OpenSSL (SHA-256 is
// nettle's), nor libstdc++ (linked in, but for the sanitizers' build): of what was left, they
// were two thirds of a run's start. The dynamic loader's own list (LD_DEBUG=libs) says what was
// loaded; a pull shows that the check sees libcurl.
TEST(ConvertCli, LocalCommandsLoadNoNetworkOrXmlLibraries) {
  ImageSpec spec;
  spec.layers.push_back(layer({dir("etc"), file("etc/motd", "local\n")}));
  TempDir tmp("convert-libs");
  write_oci_layout(tmp.path() / "layout", {{"v1", build_image(spec)}});
  TempDir home("img2vm-home");
  const char* b = std::getenv("IMG2VM_BIN");
  auto traced = [&](std::vector<std::string> args) {
    args.insert(args.begin(), b ? b : "img2vm");
    RunOptions o;
    o.env["IMG2VM_HOME"] = home.path().string();
    o.env["LD_DEBUG"] = "libs";
    return run_command(args, o);
  };
  const fs::path out = tmp.path() / "out.ext4";
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"--version"},
           {"convert", "oci:" + (tmp.path() / "layout").string() + ":v1", "-o", out.string()},
           {"images"}}) {
    CommandResult r = traced(args);
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    ASSERT_NE(r.err.find("calling init:"), std::string::npos) << "no loader trace: " << r.err;
    for (const char* lib : {"libcurl", "libgnutls", "libxml2", "libicu", "libnftables", "libnftnl",
                            "libmnl", "libxtables", "libjansson", "libgmp", "libcrypto", "libssl"})
      EXPECT_EQ(r.err.find(lib), std::string::npos) << args[0] << " loaded " << lib;
#if !defined(__SANITIZE_ADDRESS__)
    EXPECT_EQ(r.err.find("libstdc++"), std::string::npos) << args[0] << " loaded libstdc++";
#endif
  }
  EXPECT_TRUE(fs::exists(out));
  // Port 1 on the loopback: refused at once, after libcurl was opened for the request.
  CommandResult pull = traced({"pull", "127.0.0.1:1/none/such:1"});
  EXPECT_NE(pull.exit_code, 0) << pull.describe();
  EXPECT_NE(pull.err.find("libcurl.so.4"), std::string::npos) << pull.err;
}

// Without a usable libcurl, a command that needs a registry says which library it could not
// load and why, in one line with a non-zero exit: a file that is no shared object, and a shared
// object that lacks libcurl's functions (found first through LD_LIBRARY_PATH).
TEST(ConvertCli, PullWithoutUsableLibcurlSaysWhichLibraryAndWhy) {
  TempDir tmp("no-libcurl");
  TempDir home("img2vm-home");
  const char* b = std::getenv("IMG2VM_BIN");
  auto pull_with = [&](const fs::path& libdir) {
    RunOptions o;
    o.env["IMG2VM_HOME"] = home.path().string();
    o.env["LD_LIBRARY_PATH"] = libdir.string();
    return run_command({b ? b : "img2vm", "pull", "127.0.0.1:1/none/such:1"}, o);
  };
  const fs::path junk = tmp.path() / "junk";
  fs::create_directories(junk);
  write_file_atomic(junk / "libcurl.so.4", "not a shared object\n");
  CommandResult r = pull_with(junk);
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("img2vm: cannot load libcurl.so.4, needed to talk to registries"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;

  const fs::path empty = tmp.path() / "empty";
  fs::create_directories(empty);
  write_file_atomic(tmp.path() / "empty.c", "int not_curl;\n");
  CommandResult cc = run_command({"cc", "-shared", "-fPIC", "-o", (empty / "libcurl.so.4").string(),
                                  (tmp.path() / "empty.c").string()});
  ASSERT_EQ(cc.exit_code, 0) << cc.describe();
  r = pull_with(empty);
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("libcurl.so.4 has no curl_global_init"), std::string::npos) << r.err;
}
