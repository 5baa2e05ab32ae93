// Pulls against a real docker-registry (the harness), images pushed by skopeo, and the img2vm
// binary for the user-facing errors. Every test uses its own store ($IMG2VM_HOME in a TempDir).
#include "img2vm/registry/pull.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>

#include <csignal>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "fault_proxy.hpp"
#include "image_builder.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/registry/image_source.hpp"
#include "img2vm/registry/store.hpp"
#include "process.hpp"
#include "registry.hpp"
#include "skopeo.hpp"

using namespace img2vm;
using namespace img2vm::testing;
using namespace img2vm::registry;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string bin() {
  const char* b = std::getenv("IMG2VM_BIN");
  return b ? b : "img2vm";
}

CommandResult img2vm(const fs::path& home, std::vector<std::string> args, RunOptions o = {}) {
  args.insert(args.begin(), bin());
  o.env["IMG2VM_HOME"] = home.string();
  if (!o.env.count("DOCKER_CONFIG")) o.env["DOCKER_CONFIG"] = (home / "no-docker-config").string();
  return run_command(args, o);
}

RunOptions stdin_input(std::string in) {
  RunOptions o;
  o.input = std::move(in);
  return o;
}

std::string random_bytes(size_t n, unsigned seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (auto& c : s) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c = static_cast<char>(x);
  }
  return s;
}

// Three layers: small gzip, 3 MiB gzip, and a zstd one unless gzip_only (Docker v2s2 and
// Debian's umoci know no zstd).
ImageSpec multi_layer_spec(const std::string& marker, bool gzip_only = false) {
  ImageSpec spec;
  spec.layers.push_back(layer({dir("etc"), file("etc/marker", marker + "\n")}));
  spec.layers.push_back(layer({file("data/big.bin", random_bytes(3 << 20, 7))}));
  spec.layers.push_back(layer({file("hello.txt", "hello\n", 0600)},
                              gzip_only ? LayerCompression::kGzip : LayerCompression::kZstd));
  spec.config.cmd = {"/bin/sh"};
  return spec;
}

void push(Registry& reg, const BuiltImage& img, const std::string& dest,
          const std::vector<std::string>& extra = {}) {
  TempDir layout("layout");
  write_oci_layout(layout.path(), {{"t", img}});
  skopeo_push("oci:" + layout.path().string() + ":t", reg, dest, extra);
}

// Pushes the images of `idx` and the index itself (as they are) to `dest`.
void push_index(Registry& reg, const BuiltIndex& idx, const std::string& dest) {
  TempDir layout("layout");
  write_oci_layout(layout.path(), "t", idx);
  skopeo_push("oci:" + layout.path().string() + ":t", reg, dest, {"--all"});
}

// `blob` (a JSON document) changed by `edit`, with its digest updated.
void edit_json(BuiltBlob& blob, const std::function<void(json&)>& edit) {
  json j = json::parse(blob.data);
  edit(j);
  blob.data = j.dump();
  blob.digest = Digest::sha256_of(blob.data);
}

int count_in_log(const Registry& reg, const std::string& needle) {
  // Access-log lines only: "GET /v2/... HTTP/1.1".
  std::string log = read_file(reg.log_file());
  std::string needle_line = "\"GET " + needle;
  int n = 0;
  for (size_t p = log.find(needle_line); p != std::string::npos; p = log.find(needle_line, p + 1))
    ++n;
  return n;
}

PullOptions opts_for(const Registry& reg) {
  PullOptions o;
  o.platform = Platform::parse("linux/amd64");
  if (reg.tls()) o.client.ca_cert = reg.ca_cert_file().string();
  o.client.use_docker_config = false;
  o.client.backoff_initial = std::chrono::milliseconds(20);
  if (reg.options().auth != RegistryAuth::kNone)
    o.client.credentials = Credentials{reg.username(), reg.password(), ""};
  return o;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return {};
}

void expect_image_in_store(const Store& store, const std::string& name, const BuiltImage& img) {
  auto src = open_image(store, name);
  EXPECT_EQ(src->manifest_digest(), img.manifest.digest);
  EXPECT_EQ(src->manifest_bytes(), img.manifest.data);
  EXPECT_EQ(src->config_bytes(), img.config.data);
  ASSERT_EQ(src->manifest().layers.size(), img.layers.size());
  for (size_t i = 0; i < img.layers.size(); ++i) {
    const Descriptor& d = src->manifest().layers[i];
    EXPECT_EQ(d.digest, img.layers[i].digest);
    auto p = src->blob_path(d);
    ASSERT_TRUE(p);
    EXPECT_EQ(read_file(*p), img.layers[i].data);
    auto r = src->open_blob(d);
    std::string got, buf(4096, '\0');
    while (size_t n = r->read(buf.data(), buf.size())) got.append(buf.data(), n);
    EXPECT_EQ(got, img.layers[i].data);
  }
}

TEST(Pull, ByTagThenUpToDateThenByDigest) {
  Registry reg(RegistryAuth::kNone);
  BuiltImage img = build_image(multi_layer_spec("tag"));
  push(reg, img, "test/app:v1");
  TempDir home("home");
  Store store(home.path());
  std::string ref = reg.host() + "/test/app:v1";
  PullResult r = pull(store, ref, opts_for(reg));
  EXPECT_EQ(r.name, ref);
  EXPECT_EQ(r.manifest_digest, img.manifest.digest);
  EXPECT_FALSE(r.up_to_date);
  EXPECT_EQ(r.bytes_downloaded,
            img.config.size() + img.layers[0].size() + img.layers[1].size() + img.layers[2].size());
  expect_image_in_store(store, ref, img);

  // Again: one manifest request, no blob request, nothing downloaded.
  int manifests = count_in_log(reg, "/v2/test/app/manifests/");
  int blobs = count_in_log(reg, "/v2/test/app/blobs/");
  PullResult again = pull(store, ref, opts_for(reg));
  EXPECT_TRUE(again.up_to_date);
  EXPECT_EQ(again.bytes_downloaded, 0u);
  EXPECT_EQ(count_in_log(reg, "/v2/test/app/manifests/"), manifests + 1);
  EXPECT_EQ(count_in_log(reg, "/v2/test/app/blobs/"), blobs);

  // By digest into a fresh store, and the stored layout is readable by skopeo.
  TempDir home2("home");
  Store store2(home2.path());
  std::string by_digest = reg.host() + "/test/app@" + img.manifest.digest.str();
  EXPECT_EQ(pull(store2, by_digest, opts_for(reg)).manifest_digest, img.manifest.digest);
  expect_image_in_store(store2, by_digest, img);
  TempDir out("out");
  auto sk = run_command({"skopeo", "copy", "oci:" + store2.layout_dir().string() + ":" + by_digest,
                         "oci:" + out.path().string() + ":copy"});
  EXPECT_EQ(sk.exit_code, 0) << sk.describe();
  // A wrong digest is refused.
  std::string wrong = reg.host() + "/test/app@sha256:" + std::string(64, '0');
  EXPECT_NE(error_of([&] { pull(store2, wrong, opts_for(reg)); }).find("manifest sha256:0000"),
            std::string::npos);
}

TEST(Pull, DockerV2s2PushedBySkopeo) {
  Registry reg(RegistryAuth::kNone);
  BuiltImage img = build_image(multi_layer_spec("v2s2", true));  // skopeo converts it
  push(reg, img, "test/docker:v1", {"--format", "v2s2"});
  TempDir home("home");
  Store store(home.path());
  std::string served = skopeo_inspect_raw(reg, "test/docker:v1");
  PullResult r = pull(store, reg.host() + "/test/docker:v1", opts_for(reg));
  EXPECT_EQ(r.manifest_digest, Digest::sha256_of(served));
  auto src = open_image(store, reg.host() + "/test/docker:v1");
  EXPECT_EQ(src->manifest().media_type, "application/vnd.docker.distribution.manifest.v2+json");
  EXPECT_EQ(src->manifest().layers.size(), 3u);
  EXPECT_EQ(src->platform().str(), "linux/amd64");
}

TEST(Pull, IndexSelectsPlatformAndSkipsAttestations) {
  Registry reg(RegistryAuth::kNone);
  std::vector<ImageSpec> specs;
  for (auto [arch, variant] :
       {std::pair{"amd64", ""}, std::pair{"arm64", "v8"}, std::pair{"arm", "v7"}}) {
    ImageSpec s;
    s.layers.push_back(layer({file("arch", std::string(arch) + "\n")}));
    s.config.architecture = arch;
    s.config.variant = variant;
    specs.push_back(s);
  }
  BuiltIndex idx = build_index(specs);
  // An attestation-style entry (unknown/unknown), first in the list.
  edit_json(idx.index, [](json& j) {
    json att = j["manifests"][2];
    att["platform"] = {{"os", "unknown"}, {"architecture", "unknown"}};
    att["annotations"] = {{"vnd.docker.reference.type", "attestation-manifest"}};
    j["manifests"].insert(j["manifests"].begin(), att);
  });
  push_index(reg, idx, "test/multi:v1");

  TempDir home("home");
  Store store(home.path());
  PullOptions o = opts_for(reg);
  o.platform = Platform::parse("linux/arm64");
  PullResult r = pull(store, reg.host() + "/test/multi:v1", o);
  EXPECT_EQ(r.manifest_digest, idx.images[1].manifest.digest);
  EXPECT_EQ(r.platform.str(), "linux/arm64");
  auto stored = store.find(reg.host() + "/test/multi:v1");
  ASSERT_TRUE(stored);
  EXPECT_EQ(stored->index_digest, idx.index.digest);

  o.platform = Platform::parse("linux/riscv64");
  std::string e = error_of([&] { pull(store, reg.host() + "/test/multi:v1", o); });
  EXPECT_NE(e.find("no image for platform linux/riscv64"), std::string::npos) << e;
  EXPECT_NE(e.find("available: linux/amd64, linux/arm64, linux/arm/v7)"), std::string::npos) << e;
  EXPECT_EQ(e.find("unknown"), std::string::npos) << e;
}

TEST(Pull, IndexEntryWithoutPlatformTakesTheConfigsPlatform) {
  // An index whose only entry names no platform: it is chosen for any platform, and the image
  // is stored with the platform its config declares.
  Registry reg(RegistryAuth::kNone);
  ImageSpec s;
  s.layers.push_back(layer({file("arch", "arm64\n")}));
  s.config.architecture = "aarch64";
  BuiltIndex idx = build_index({s});
  edit_json(idx.index, [](json& j) { j["manifests"][0].erase("platform"); });
  push_index(reg, idx, "test/noplat:v1");

  TempDir home("home");
  Store store(home.path());
  PullResult r = pull(store, reg.host() + "/test/noplat:v1", opts_for(reg));
  EXPECT_EQ(r.manifest_digest, idx.images[0].manifest.digest);
  EXPECT_EQ(r.platform.str(), "linux/arm64");
  auto stored = store.find(reg.host() + "/test/noplat:v1");
  ASSERT_TRUE(stored);
  EXPECT_EQ(stored->index_digest, idx.index.digest);
  ASSERT_TRUE(stored->manifest.platform);
  EXPECT_EQ(stored->manifest.platform->str(), "linux/arm64");
}

TEST(Pull, ConfigPlatformFieldsThatAreNotStringsAreAnError) {
  // The config's platform is read like an index entry's: normalized, and a field that is not a
  // string is an img2vm::Error naming the config, from every kind of source.
  BuiltImage img = build_image(multi_layer_spec("numeric-arch"));
  edit_json(img.config, [](json& c) { c["architecture"] = 64; });
  edit_json(img.manifest, [&](json& m) {
    m["config"]["digest"] = img.config.digest.str();
    m["config"]["size"] = img.config.size();
  });
  TempDir dir("src");
  write_oci_layout(dir.path() / "layout", {{"v1", img}});
  write_docker_archive(dir.path() / "image.tar", img, {"example.com/test/numeric:1"});
  Registry reg(RegistryAuth::kNone);
  push(reg, img, "test/numeric:v1");

  TempDir home("home");
  Store store(home.path());
  for (const std::string& spec :
       {reg.host() + "/test/numeric:v1", "oci:" + (dir.path() / "layout").string() + ":v1",
        "docker-archive:" + (dir.path() / "image.tar").string()}) {
    std::string e = error_of([&] { pull(store, spec, opts_for(reg)); });
    EXPECT_NE(e.find("invalid image config " + img.config.digest.str()), std::string::npos)
        << spec << ": " << e;
    EXPECT_NE(e.find("\"architecture\" is not a string"), std::string::npos) << spec << ": " << e;
  }
  EXPECT_TRUE(store.list().empty());
}

TEST(Pull, BasicAuthOverTls) {
  Registry reg(RegistryAuth::kBasicTls);
  BuiltImage img = build_image(multi_layer_spec("basic"));
  push(reg, img, "private/app:v1");
  TempDir home("home");
  Store store(home.path());
  PullResult r = pull(store, reg.host() + "/private/app:v1", opts_for(reg));
  EXPECT_EQ(r.manifest_digest, img.manifest.digest);

  PullOptions anon = opts_for(reg);
  anon.client.credentials.reset();
  EXPECT_NE(
      error_of([&] { pull(store, reg.host() + "/private/app:v1", anon); }).find("unauthorized"),
      std::string::npos);

  // The CLI: --password-stdin, and a TLS failure without the CA.
  TempDir home2("home");
  auto ok = img2vm(home2.path(),
                   {"pull", reg.host() + "/private/app:v1", "--username", reg.username(),
                    "--password-stdin", "--ca-cert", reg.ca_cert_file().string()},
                   stdin_input(reg.password() + "\n"));
  EXPECT_EQ(ok.exit_code, 0) << ok.describe();
  EXPECT_EQ(ok.err.find(reg.password()), std::string::npos);
  auto tls = img2vm(home2.path(), {"pull", reg.host() + "/private/app:v1"});
  EXPECT_EQ(tls.exit_code, 1) << tls.describe();
  EXPECT_NE(tls.err.find("TLS failure"), std::string::npos) << tls.err;
  EXPECT_EQ(std::count(tls.err.begin(), tls.err.end(), '\n'), 1) << tls.err;
}

// Loopback registries: plain HTTP is asked first (one request, no TLS attempt that would load
// the CA bundle); a TLS registry answers that with 400 and is then reached over https.
TEST(Pull, LoopbackSchemeProbe) {
  Registry plain(RegistryAuth::kNone);
  Client c1(plain.host(), opts_for(plain).client);
  c1.ping();
  EXPECT_EQ(c1.request_count("ping"), 1u);
  Registry tls(RegistryAuth::kBasicTls);
  Client c2(tls.host(), opts_for(tls).client);
  c2.ping();
  EXPECT_EQ(c2.request_count("ping"), 2u);
}

TEST(Pull, TokenAuthWithDockerConfigAndWrongPassword) {
  Registry reg(RegistryAuth::kToken);
  BuiltImage img = build_image(multi_layer_spec("token"));
  push(reg, img, "private/app:v1");
  TempDir home("home");
  PullResult r = [&] {
    Store store(home.path());
    return pull(store, reg.host() + "/private/app:v1", opts_for(reg));
  }();
  EXPECT_EQ(r.manifest_digest, img.manifest.digest);

  // Credentials from $DOCKER_CONFIG/config.json (auths, base64 user:password).
  TempDir cfg("dockercfg");
  json c = {
      {"auths", {{reg.host(), {{"auth", base64_encode(reg.username() + ":" + reg.password())}}}}}};
  write_file_atomic(cfg.path() / "config.json", c.dump());
  TempDir home2("home");
  RunOptions ro;
  ro.env["DOCKER_CONFIG"] = cfg.path().string();
  auto ok = img2vm(home2.path(), {"--json", "pull", reg.host() + "/private/app:v1"}, ro);
  ASSERT_EQ(ok.exit_code, 0) << ok.describe();
  // --json: one event per line, ending with "done".
  std::vector<json> events;
  std::istringstream lines(ok.out);
  for (std::string l; std::getline(lines, l);) events.push_back(json::parse(l));
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.front()["event"], "resolved");
  EXPECT_EQ(events.back()["event"], "done");
  EXPECT_EQ(events.back()["digest"], img.manifest.digest.str());

  // A wrong password: one line saying unauthorized, with a docker login hint.
  TempDir home3("home");
  auto bad =
      img2vm(home3.path(),
             {"pull", reg.host() + "/private/app:v1", "-u", reg.username(), "--password-stdin"},
             stdin_input("wrong\n"));
  EXPECT_EQ(bad.exit_code, 1) << bad.describe();
  EXPECT_NE(bad.err.find("unauthorized"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("docker login"), std::string::npos) << bad.err;
  EXPECT_EQ(std::count(bad.err.begin(), bad.err.end(), '\n'), 1) << bad.err;
  // Anonymous: the token carries no access to the private repository.
  auto anon = img2vm(home3.path(), {"pull", reg.host() + "/private/app:v1"});
  EXPECT_EQ(anon.exit_code, 1);
  EXPECT_NE(anon.err.find("unauthorized"), std::string::npos) << anon.err;
}

TEST(Pull, UserFacingErrors) {
  Registry reg(RegistryAuth::kNone);
  BuiltImage img = build_image(multi_layer_spec("errors"));
  push(reg, img, "test/app:v1");
  TempDir home("home");
  auto unknown_repo = img2vm(home.path(), {"pull", reg.host() + "/no/such:v1"});
  EXPECT_EQ(unknown_repo.exit_code, 1);
  EXPECT_NE(unknown_repo.err.find("unknown repository no/such"), std::string::npos)
      << unknown_repo.err;
  auto no_tag = img2vm(home.path(), {"pull", reg.host() + "/test/app:v9"});
  EXPECT_EQ(no_tag.exit_code, 1);
  EXPECT_NE(no_tag.err.find("tag not found: v9"), std::string::npos) << no_tag.err;
  auto bad_ref = img2vm(home.path(), {"pull", "Alpine"});
  EXPECT_EQ(bad_ref.exit_code, 1);
  EXPECT_NE(bad_ref.err.find("must be lowercase"), std::string::npos) << bad_ref.err;
  auto plat = img2vm(home.path(), {"pull", reg.host() + "/test/app:v1", "--platform", "linux"});
  EXPECT_EQ(plat.exit_code, 1);
  EXPECT_NE(plat.err.find("invalid platform"), std::string::npos) << plat.err;
  auto missing = img2vm(home.path(), {"inspect", "nothing/here"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("not in the store"), std::string::npos) << missing.err;
  for (const auto& r : {unknown_repo, no_tag, bad_ref, plat, missing})
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST(Pull, StoreCommandsImagesInspectRmPrune) {
  Registry reg(RegistryAuth::kNone);
  BuiltImage a = build_image(multi_layer_spec("a", true));
  push(reg, a, "test/a:v1");
  TempDir home("home");
  auto p = img2vm(home.path(), {"pull", reg.host() + "/test/a:v1"});
  ASSERT_EQ(p.exit_code, 0) << p.describe();
  EXPECT_NE(p.out.find(a.manifest.digest.str()), std::string::npos) << p.out;
  EXPECT_TRUE(p.err.empty()) << p.err;  // not a TTY: quiet
  auto imgs = img2vm(home.path(), {"images", "--json"});
  ASSERT_EQ(imgs.exit_code, 0) << imgs.describe();
  json j = json::parse(imgs.out);
  EXPECT_EQ(j["ref"], reg.host() + "/test/a:v1");
  EXPECT_EQ(j["digest"], a.manifest.digest.str());
  EXPECT_EQ(j["platform"], "linux/amd64");
  EXPECT_EQ(j["size"].get<uint64_t>(),
            a.config.size() + a.layers[0].size() + a.layers[1].size() + a.layers[2].size());
  auto table = img2vm(home.path(), {"images"});
  EXPECT_NE(table.out.find("REFERENCE"), std::string::npos);
  EXPECT_NE(table.out.find("ago"), std::string::npos) << table.out;
  auto insp = img2vm(home.path(), {"inspect", reg.host() + "/test/a:v1"});
  ASSERT_EQ(insp.exit_code, 0) << insp.describe();
  json ij = json::parse(insp.out);
  EXPECT_EQ(ij["manifest"], json::parse(a.manifest.data));
  EXPECT_EQ(ij["config"], json::parse(a.config.data));
  // umoci reads the store as an OCI layout.
  TempDir bundle("bundle");
  auto um = run_command({"umoci", "raw", "unpack", "--rootless", "--image",
                         (home.path() / "oci").string() + ":" + reg.host() + "/test/a:v1",
                         (bundle.path() / "rootfs").string()});
  EXPECT_EQ(um.exit_code, 0) << um.describe();
  EXPECT_EQ(read_file(bundle.path() / "rootfs/etc/marker"), "a\n");

  // A converted root filesystem stays cached while its image is stored, and goes with it.
  auto cv = img2vm(home.path(), {"convert", reg.host() + "/test/a:v1"});
  ASSERT_EQ(cv.exit_code, 0) << cv.describe();
  auto keep = img2vm(home.path(), {"prune", "--json"});
  ASSERT_EQ(keep.exit_code, 0) << keep.describe();
  EXPECT_EQ(json::parse(keep.out)["rootfs_files"], 0) << keep.out;
  EXPECT_EQ(json::parse(keep.out)["blobs"], 0) << keep.out;

  auto rm = img2vm(home.path(), {"rm", reg.host() + "/test/a:v1"});
  EXPECT_EQ(rm.exit_code, 0) << rm.describe();
  auto rm2 = img2vm(home.path(), {"rm", reg.host() + "/test/a:v1"});
  EXPECT_EQ(rm2.exit_code, 1);
  EXPECT_NE(rm2.err.find("not in the store"), std::string::npos);
  auto pr = img2vm(home.path(), {"prune", "--json"});
  ASSERT_EQ(pr.exit_code, 0) << pr.describe();
  EXPECT_EQ(json::parse(pr.out)["blobs"], 5);                   // manifest, config, 3 layers
  EXPECT_EQ(json::parse(pr.out)["rootfs_files"], 2) << pr.out;  // the ext4 and its sidecar
  EXPECT_TRUE(fs::is_empty(home.path() / "rootfs"));
  size_t left = 0;
  for (auto& e : fs::directory_iterator(home.path() / "oci/blobs/sha256"))
    left += e.is_regular_file();
  EXPECT_EQ(left, 0u);
}

TEST(Pull, LocalSourcesOciLayoutAndDockerArchive) {
  BuiltImage img = build_image(multi_layer_spec("local"));
  TempDir dir("src");
  write_oci_layout(dir.path() / "layout", {{"v1", img}});
  write_docker_archive(dir.path() / "image.tar", img, {"example.com/test/archive:1"});
  TempDir home("home");
  Store store(home.path());
  PullResult r = pull(store, "oci:" + (dir.path() / "layout").string() + ":v1", {});
  EXPECT_EQ(r.manifest_digest, img.manifest.digest);
  expect_image_in_store(store, r.name, img);

  PullResult a = pull(store, "docker-archive:" + (dir.path() / "image.tar").string(), {});
  EXPECT_EQ(a.name, "example.com/test/archive:1");
  auto src = open_image(store, "example.com/test/archive:1");
  EXPECT_EQ(src->config_bytes(), img.config.data);
  ASSERT_EQ(src->manifest().layers.size(), 3u);
  // The archive holds the layers as docker save wrote them; their content is the same tar.
  auto direct = open_image_source("docker-archive:" + (dir.path() / "image.tar").string() +
                                  ":example.com/test/archive:1");
  EXPECT_EQ(direct->manifest_digest(), src->manifest_digest());
  EXPECT_NE(error_of([&] {
              open_image_source("oci:" + (dir.path() / "layout").string() + ":nope");
            }).find("tag not found: nope"),
            std::string::npos);
}

TEST(Pull, CorruptedBlobInRegistryIsRejectedAndLeavesNoTrace) {
  Registry reg(RegistryAuth::kNone);
  BuiltImage img = build_image(multi_layer_spec("corrupt"));
  push(reg, img, "test/bad:v1");
  const Digest& bad = img.layers[1].digest;
  fs::path data = reg.storage_dir() / "docker/registry/v2/blobs/sha256" / bad.hex().substr(0, 2) /
                  bad.hex() / "data";
  ASSERT_TRUE(fs::exists(data));
  {
    std::fstream f(data, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(1000);
    f.put('X');
  }
  TempDir home("home");
  Store store(home.path());
  std::string e = error_of([&] { pull(store, reg.host() + "/test/bad:v1", opts_for(reg)); });
  EXPECT_NE(e.find(bad.str()), std::string::npos) << e;
  EXPECT_NE(e.find("failed verification"), std::string::npos) << e;
  EXPECT_FALSE(store.has_blob(bad));
  EXPECT_FALSE(fs::exists(home.path() / "ingest" / (bad.hex() + ".partial")));
  EXPECT_TRUE(store.list().empty());
}

TEST(Pull, ConcurrentPullsIntoOneStore) {
  Registry reg(RegistryAuth::kNone);
  BuiltImage img = build_image(multi_layer_spec("concurrent"));
  push(reg, img, "test/c:v1");
  push(reg, img, "test/c:v2");
  TempDir home("home");
  std::vector<CommandResult> results(4);
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i)
    ts.emplace_back([&, i] {
      results[i] =
          img2vm(home.path(), {"pull", reg.host() + "/test/c:v" + std::to_string(1 + i % 2)});
    });
  for (auto& t : ts) t.join();
  for (const auto& r : results) EXPECT_EQ(r.exit_code, 0) << r.describe();
  Store store(home.path());
  EXPECT_EQ(store.list().size(), 2u);
  expect_image_in_store(store, reg.host() + "/test/c:v1", img);
  expect_image_in_store(store, reg.host() + "/test/c:v2", img);
  EXPECT_TRUE(fs::is_empty(home.path() / "ingest") ||
              std::none_of(fs::directory_iterator(home.path() / "ingest"), fs::directory_iterator(),
                           [](const auto& e) { return e.path().extension() == ".partial"; }));
}

TEST(Pull, RegistryDownThenResumesFromPartialDownload) {
  Registry reg(RegistryAuth::kNone);
  BuiltImage img = build_image(multi_layer_spec("resume"));
  push(reg, img, "test/r:v1");
  TempDir home("home");
  Store store(home.path());
  // The registry dies: the pull fails with one clear network error and stores nothing.
  reg.kill();
  std::string e = error_of([&] { pull(store, reg.host() + "/test/r:v1", opts_for(reg)); });
  EXPECT_NE(e.find("cannot reach registry"), std::string::npos) << e;
  EXPECT_TRUE(store.list().empty());
  reg.start();
  // An interrupted download left the first half of the big layer behind; the next pull
  // continues from there with a Range request.
  const BuiltLayer& big = img.layers[1];
  size_t half = big.data.size() / 2;
  write_file_atomic(home.path() / "ingest" / (big.digest.hex() + ".partial"),
                    big.data.substr(0, half));
  PullOptions o = opts_for(reg);
  uint64_t resumed_at = 0;
  o.progress = [&](const PullEvent& ev) {
    if (ev.kind == PullEvent::Kind::kBlobStart && ev.digest == big.digest) resumed_at = ev.current;
  };
  PullResult r = pull(store, reg.host() + "/test/r:v1", o);
  EXPECT_EQ(resumed_at, half);
  EXPECT_EQ(r.bytes_downloaded,
            img.config.size() + img.layers[0].size() + (big.size() - half) + img.layers[2].size());
  expect_image_in_store(store, reg.host() + "/test/r:v1", img);
}

// Ctrl-C during `img2vm pull`: exit 130 with one line, the partial download kept, nothing in
// the store's index; the next pull resumes the blob with a Range request.
TEST(Pull, CtrlCStopsCleanlyAndTheNextPullResumes) {
  Registry reg(RegistryAuth::kNone);
  BuiltImage img = build_image(multi_layer_spec("ctrlc"));
  push(reg, img, "test/c:v1");
  std::string h = reg.host();
  FaultProxy proxy("127.0.0.1", std::stoi(h.substr(h.find(':') + 1)));
  using F = FaultProxy::Fault;
  proxy.script(std::vector<F>(16, F::kSlow));  // every blob at ~160 KiB/s
  TempDir home("home");
  std::string ref = proxy.host() + "/test/c:v1";
  const BuiltLayer& big = img.layers[1];
  fs::path partial = home.path() / "ingest" / (big.digest.hex() + ".partial");
  ChildProcess p(
      {bin(), "pull", "--jobs", "1", ref}, home.path() / "pull.log",
      {{"IMG2VM_HOME", home.path().string()}, {"DOCKER_CONFIG", (home.path() / "none").string()}});
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  std::error_code ec;
  while (std::chrono::steady_clock::now() < deadline && p.running() &&
         !(fs::exists(partial, ec) && fs::file_size(partial, ec) >= (64u << 10)))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(p.running()) << read_file(home.path() / "pull.log");
  ASSERT_GE(fs::file_size(partial, ec), 64u << 10) << "the big layer's download never started";
  ::kill(p.pid(), SIGINT);
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (p.running() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_FALSE(p.running()) << "Ctrl-C did not stop the pull";
  std::string log = read_file(home.path() / "pull.log");
  EXPECT_EQ(p.exit_code(), 130) << log;
  EXPECT_NE(log.find("interrupted: the partial downloads are kept and the next pull resumes them"),
            std::string::npos)
      << log;
  uint64_t kept = fs::file_size(partial, ec);
  EXPECT_GE(kept, 64u << 10) << "the partial download was not kept";
  EXPECT_LT(kept, big.size());
  EXPECT_TRUE(Store(home.path()).list().empty()) << "an interrupted pull put an image in the index";

  proxy.script({});
  auto again = img2vm(home.path(), {"pull", ref});
  ASSERT_EQ(again.exit_code, 0) << again.describe();
  bool resumed = false;
  for (const auto& s : proxy.blob_requests())
    if (s.path.find(big.digest.hex()) != std::string::npos && s.range.rfind("bytes=", 0) == 0 &&
        s.range != "bytes=0-")
      resumed = true;
  EXPECT_TRUE(resumed) << "the second pull downloaded the big layer from the start";
  Store store(home.path());
  expect_image_in_store(store, ref, img);
}

// On a terminal (a pseudo-terminal from script(1)) pull redraws one line per blob with its
// rate and ETA, then prints its summary; through a pipe it prints only the summary.
TEST(Pull, ProgressLinesOnATerminalOnlyTheSummaryOtherwise) {
  Registry reg(RegistryAuth::kNone);
  ImageSpec spec;
  spec.layers.push_back(
      layer({file("data.bin", random_bytes(640 << 10, 3))}, LayerCompression::kNone));
  spec.config.cmd = {"/bin/true"};
  BuiltImage img = build_image(spec);
  push(reg, img, "test/p:v1");
  std::string h = reg.host();
  FaultProxy proxy("127.0.0.1", std::stoi(h.substr(h.find(':') + 1)));
  proxy.script(std::vector<FaultProxy::Fault>(4, FaultProxy::Fault::kSlow));  // ~4 s for the layer
  TempDir home("home");
  std::string ref = proxy.host() + "/test/p:v1";
  RunOptions o;
  o.env["IMG2VM_HOME"] = home.path().string();
  o.env["DOCKER_CONFIG"] = (home.path() / "none").string();
  o.timeout = std::chrono::minutes(2);
  o.terminal = true;
  auto tty = run_command({bin(), "pull", ref}, o);
  ASSERT_EQ(tty.exit_code, 0) << tty.describe();
  const std::string& out = tty.out;
  EXPECT_NE(out.find(img.config.digest.short_hex() + ": done"), std::string::npos) << out;
  EXPECT_NE(out.find(": downloading     "), std::string::npos) << out;
  EXPECT_NE(out.find(" / 6"), std::string::npos)
      << out;  // the layer (skopeo gzips it when pushing)
  EXPECT_NE(out.find("downloading"), std::string::npos) << out;
  EXPECT_NE(out.find("/s  ETA "), std::string::npos) << out;
  EXPECT_NE(out.find("\033["), std::string::npos) << "no redraw (cursor up) in: " << out;
  EXPECT_NE(out.find("done"), std::string::npos) << out;
  EXPECT_NE(out.find(" linux/amd64 (downloaded "), std::string::npos) << out;
  EXPECT_EQ(out.find("()"), std::string::npos) << "an empty platform was printed: " << out;

  TempDir home2("home");
  auto piped = img2vm(home2.path(), {"pull", reg.host() + "/test/p:v1"});
  ASSERT_EQ(piped.exit_code, 0) << piped.describe();
  EXPECT_TRUE(piped.err.empty()) << piped.err;
  EXPECT_EQ(std::count(piped.out.begin(), piped.out.end(), '\n'), 1) << piped.out;
  EXPECT_EQ(piped.out.find("\033["), std::string::npos) << piped.out;
}

// Ctrl-C while no bytes flow (a stalled registry): the pull still stops within seconds, not
// after the 60 s stall timeout.
TEST(Pull, CtrlCStopsAStalledPull) {
  Registry reg(RegistryAuth::kNone);
  BuiltImage img = build_image(multi_layer_spec("stall"));
  push(reg, img, "test/s:v1");
  std::string h = reg.host();
  FaultProxy proxy("127.0.0.1", std::stoi(h.substr(h.find(':') + 1)));
  proxy.script(std::vector<FaultProxy::Fault>(16, FaultProxy::Fault::kStall));
  TempDir home("home");
  ChildProcess p(
      {bin(), "pull", proxy.host() + "/test/s:v1"}, home.path() / "pull.log",
      {{"IMG2VM_HOME", home.path().string()}, {"DOCKER_CONFIG", (home.path() / "none").string()}});
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (proxy.blob_requests().empty() && p.running() &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_FALSE(proxy.blob_requests().empty()) << read_file(home.path() / "pull.log");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // into the stall
  ASSERT_TRUE(p.running());
  ::kill(p.pid(), SIGINT);
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (p.running() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_FALSE(p.running()) << "a stalled pull ignored Ctrl-C";
  std::string log = read_file(home.path() / "pull.log");
  EXPECT_EQ(p.exit_code(), 130) << log;
  EXPECT_NE(log.find("interrupted"), std::string::npos) << log;
  EXPECT_TRUE(Store(home.path()).list().empty());
}

TEST(Pull, SurvivesResetsTruncation503And429ThroughAFaultyProxy) {
  Registry reg(RegistryAuth::kNone);
  BuiltImage img = build_image(multi_layer_spec("faults"));
  push(reg, img, "test/f:v1");
  std::string h = reg.host();
  FaultProxy proxy("127.0.0.1", std::stoi(h.substr(h.find(':') + 1)));
  using F = FaultProxy::Fault;
  // One download at a time so that the faults hit the blobs in a known order: the config gets
  // a reset and a 503, the small layer a 429, and the 3 MiB layer is cut after 1 MiB.
  proxy.script({F::kReset, F::k503, F::kPass, F::k429, F::kPass, F::kTruncate}, 1 << 20);
  TempDir home("home");
  Store store(home.path());
  PullOptions o = opts_for(reg);
  o.jobs = 1;
  std::string ref = proxy.host() + "/test/f:v1";
  PullResult r = pull(store, ref, o);
  EXPECT_EQ(r.manifest_digest, img.manifest.digest);
  expect_image_in_store(store, ref, img);
  // The truncated download was resumed with a Range request rather than started again.
  bool resumed = false;
  for (const auto& s : proxy.blob_requests())
    if (s.path.find(img.layers[1].digest.hex()) != std::string::npos &&
        s.range.rfind("bytes=", 0) == 0 && s.range != "bytes=0-")
      resumed = true;
  EXPECT_TRUE(resumed);
  EXPECT_EQ(proxy.blob_requests().size(), 3u + 2u + 2u + 1u);

  // Persistent 429s: the pull gives up with a "rate limited" error.
  proxy.script(std::vector<F>(10, F::k429));
  TempDir home2("home");
  Store store2(home2.path());
  o.client.max_attempts = 2;
  std::string e = error_of([&] { pull(store2, ref, o); });
  EXPECT_NE(e.find("rate limited"), std::string::npos) << e;
}

}  // namespace

namespace {

TEST(Credentials, CredentialHelperFromDockerConfig) {
  // A docker-credential-NAME program on PATH answers `get` with JSON, as real helpers do.
  Registry reg(RegistryAuth::kToken);
  BuiltImage img = build_image(multi_layer_spec("helper"));
  push(reg, img, "private/app:v1");
  TempDir cfg("dockercfg");
  fs::path helper = cfg.path() / "docker-credential-img2vmtest";
  write_file_atomic(helper,
                    "#!/bin/sh\nread server\n[ \"$1\" = get ] || exit 1\n"
                    "[ \"$server\" = \"" +
                        reg.host() +
                        "\" ] || { echo 'credentials not found'; exit 1; }\n"
                        "printf '{\"ServerURL\":\"%s\",\"Username\":\"" +
                        reg.username() + "\",\"Secret\":\"" + reg.password() + "\"}' \"$server\"\n",
                    0755);
  write_file_atomic(cfg.path() / "config.json",
                    nlohmann::json{{"credHelpers", {{reg.host(), "img2vmtest"}}}}.dump());
  TempDir home("home");
  RunOptions ro;
  ro.env["DOCKER_CONFIG"] = cfg.path().string();
  ro.env["PATH"] = cfg.path().string() + ":" + std::string(std::getenv("PATH"));
  auto r = img2vm(home.path(), {"pull", reg.host() + "/private/app:v1"}, ro);
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.out.find(img.manifest.digest.str()), std::string::npos);
  // Another registry: the helper has nothing, the pull is anonymous and refused.
  write_file_atomic(cfg.path() / "config.json",
                    nlohmann::json{{"credsStore", "img2vmtest"}}.dump());
  auto other = img2vm(
      home.path(),
      {"pull", "localhost:" + reg.host().substr(reg.host().find(':') + 1) + "/private/app:v1"}, ro);
  EXPECT_EQ(other.exit_code, 1) << other.describe();
  EXPECT_NE(other.err.find("unauthorized"), std::string::npos) << other.err;
}

}  // namespace

// What pulls that were killed leave in ingest/, and what the next pull makes of it (issue 14).
namespace {

uint16_t port_of(const Registry& reg) {
  return static_cast<uint16_t>(std::stoi(reg.host().substr(reg.host().find(':') + 1)));
}

// The Range headers of the requests for `d` from the proxy's `from`-th blob request on ("" when
// the whole blob was asked for).
std::vector<std::string> ranges_of(const FaultProxy& proxy, size_t from, const Digest& d) {
  std::vector<std::string> out;
  auto seen = proxy.blob_requests();
  for (size_t i = from; i < seen.size(); ++i)
    if (seen[i].path.find(d.hex()) != std::string::npos) out.push_back(seen[i].range);
  return out;
}

struct PartialCase {
  std::string what;
  std::string partial;              // left in ingest/ for the big layer
  std::vector<std::string> ranges;  // its requests, in order
  uint64_t downloaded;              // its bytes over the wire
};

// Each case in a fresh store, one download at a time; the image ends up whole every time.
void pull_with_partials(Registry& reg, FaultProxy& proxy, const BuiltImage& img,
                        const std::vector<PartialCase>& cases,
                        const std::vector<FaultProxy::Fault>& faults = {}) {
  const BuiltLayer& big = img.layers[1];
  std::string ref = proxy.host() + "/test/p:v1";
  uint64_t others = img.config.size();
  for (size_t i = 0; i < img.layers.size(); ++i)
    if (i != 1) others += img.layers[i].size();
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    TempDir home("home");
    Store store(home.path());
    fs::path partial = home.path() / "ingest" / (big.digest.hex() + ".partial");
    write_file_atomic(partial, c.partial);
    size_t before = proxy.blob_requests().size();
    proxy.script(faults);
    PullOptions o = opts_for(reg);
    o.jobs = 1;
    PullResult r;
    ASSERT_NO_THROW(r = pull(store, ref, o));
    expect_image_in_store(store, ref, img);
    EXPECT_EQ(ranges_of(proxy, before, big.digest), c.ranges);
    EXPECT_EQ(r.bytes_downloaded, others + c.downloaded);
    EXPECT_FALSE(fs::exists(partial));
  }
}

// Whatever a killed pull left in ingest/ for the big layer, the next pull stores the image: a
// whole partial file is committed without a request, a short one resumed, a wrong or oversized
// one discarded. Distribution answers a Range past the end with 416, the whole blob's
// Content-Length and a short body, and a resumed request can keep failing where a whole one would
// not: either way the blob is downloaded whole instead of the same request retried until the
// pull gives up.
TEST(Pull, PartialFilesLeftBehindNeverMakeAPullFail) {
  Registry reg(RegistryAuth::kNone);
  BuiltImage img = build_image(multi_layer_spec("partials"));
  push(reg, img, "test/p:v1");
  FaultProxy proxy("127.0.0.1", port_of(reg));
  const BuiltLayer& big = img.layers[1];
  const uint64_t size = big.size(), half = size / 2;
  std::string flipped = big.data;
  flipped[size / 3] ^= 0x20;
  auto from = [](uint64_t n) { return "bytes=" + std::to_string(n) + "-"; };
  pull_with_partials(
      reg, proxy, img,
      {
          {"complete", big.data, {}, 0},
          {"one byte short", big.data.substr(0, size - 1), {from(size - 1)}, 1},
          {"corrupt", std::string(half, 'Z'), {from(half), ""}, (size - half) + size},
          {"complete but corrupt", flipped, {""}, size},
          {"larger than the blob", big.data + "trailing", {""}, size},
      });
  // One download at a time: config, the small layer, then the big one meets the fault.
  using F = FaultProxy::Fault;
  pull_with_partials(reg, proxy, img,
                     {{"416 from the registry", big.data.substr(0, half), {from(half), ""}, size}},
                     {F::kPass, F::kPass, F::kRangePastEnd});
  pull_with_partials(
      reg, proxy, img,
      {{"reset twice when resumed", big.data.substr(0, half), {from(half), from(half), ""}, size}},
      {F::kPass, F::kPass, F::kReset, F::kReset});
}

// Real `img2vm pull` processes killed with SIGKILL at several points into one store (each point a
// condition: a stalled response, so many bytes in the partial file, the index lock held by the
// test), and one whose rename failed after the whole blob was written; then one more pull
// completes and the image converts.
TEST(Pull, APullAlwaysCompletesAfterEarlierPullsIntoTheSameStoreWereKilled) {
  Registry reg(RegistryAuth::kNone);
  ImageSpec spec = multi_layer_spec("killed");
  for (unsigned i = 0; i < 4; ++i)
    spec.layers.push_back(
        layer({file("extra/" + std::to_string(i), random_bytes(100000 + i, 20 + i))}));
  BuiltImage img = build_image(spec);
  ASSERT_EQ(img.layers.size(), 7u);
  push(reg, img, "test/k:v1");
  FaultProxy proxy("127.0.0.1", port_of(reg));
  TempDir home("home");
  const std::string ref = proxy.host() + "/test/k:v1";
  const BuiltLayer& big = img.layers[1];
  ASSERT_GT(big.size(), 5u << 19);
  const fs::path partial = home.path() / "ingest" / (big.digest.hex() + ".partial");
  const fs::path manifest_blob = home.path() / "oci/blobs/sha256" / img.manifest.digest.hex();
  auto partial_size = [&] {
    std::error_code ec;
    auto n = fs::file_size(partial, ec);
    return ec ? uintmax_t{0} : n;
  };
  auto kill_when = [&](const std::string& what, const std::function<bool()>& reached) {
    SCOPED_TRACE(what);
    fs::path log = home.path() / "pull.log";
    ChildProcess p({bin(), "pull", "--jobs", "1", ref}, log,
                   {{"IMG2VM_HOME", home.path().string()},
                    {"DOCKER_CONFIG", (home.path() / "none").string()}});
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (std::chrono::steady_clock::now() < deadline && p.running() && !reached())
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_TRUE(p.running()) << "the pull ended before the kill point: " << read_file(log);
    ASSERT_TRUE(reached()) << "the kill point was never reached: " << read_file(log);
    p.kill_now();
    EXPECT_TRUE(Store(home.path()).list().empty());
  };
  using F = FaultProxy::Fault;
  // One download at a time: the config and the small layer pass, the big layer's response stalls.
  proxy.script({F::kPass, F::kPass, F::kStall});
  kill_when("in the big layer's stalled response", [&] { return proxy.stalls() >= 1; });
  proxy.script(std::vector<F>(16, F::kSlow));
  kill_when("1 MiB into the big layer", [&] { return partial_size() >= (1u << 20); });
  proxy.script(std::vector<F>(16, F::kSlow));
  kill_when("2 MiB into the big layer, resumed", [&] { return partial_size() >= (2u << 20); });
  proxy.script({});
  {
    // The whole blob in its partial file, not renamed into blobs/: what a kill between the last
    // write and the rename leaves. No kill point waits there, so a pull whose rename fails (a
    // directory in the way) makes it.
    fs::path in_the_way = home.path() / "oci/blobs/sha256" / big.digest.hex();
    fs::create_directories(in_the_way / "x");
    auto failed = img2vm(home.path(), {"pull", "--jobs", "1", ref});
    EXPECT_EQ(failed.exit_code, 1) << failed.describe();
    fs::remove_all(in_the_way);
    ASSERT_EQ(partial_size(), big.size());
  }
  {
    // Every blob and the manifest stored, the index entry not written: blocked on index.lock.
    UniqueFd lock = open_file(home.path() / "index.lock", O_RDWR | O_CREAT, 0644);
    ASSERT_EQ(::flock(lock.get(), LOCK_EX), 0);
    kill_when("before its index entry", [&] { return fs::exists(manifest_blob); });
  }
  if (HasFatalFailure()) return;

  auto done = img2vm(home.path(), {"pull", ref});
  ASSERT_EQ(done.exit_code, 0) << done.describe();
  Store store(home.path());
  expect_image_in_store(store, ref, img);
  ASSERT_EQ(store.list().size(), 1u);
  for (const auto& e : fs::directory_iterator(home.path() / "ingest"))
    EXPECT_NE(e.path().extension(), ".partial") << e.path();
  fs::path rootfs = home.path() / "rootfs.ext4";
  auto conv = img2vm(home.path(), {"convert", ref, "-o", rootfs.string()});
  ASSERT_EQ(conv.exit_code, 0) << conv.describe();
  auto cat = run_command({"debugfs", "-R", "cat /etc/marker", rootfs.string()});
  EXPECT_NE(cat.out.find("killed\n"), std::string::npos) << cat.describe();
}

}  // namespace
