#include "img2vm/registry/manifest.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "img2vm/registry/media_types.hpp"
#include "platform_json.hpp"

using namespace img2vm;
using namespace img2vm::registry;
using nlohmann::json;

namespace {

std::string dg(char c) { return "sha256:" + std::string(64, c); }

json desc(const std::string& mt, char c, int64_t size) {
  return {{"mediaType", mt}, {"digest", dg(c)}, {"size", size}};
}

json plat_entry(char c, const std::string& os, const std::string& arch,
                const std::string& variant = "") {
  json d = desc(std::string(media_type::kOciManifest), c, 100);
  d["platform"] = {{"os", os}, {"architecture", arch}};
  if (!variant.empty()) d["platform"]["variant"] = variant;
  return d;
}

Index index_of(std::vector<json> entries) {
  json j = {{"schemaVersion", 2}, {"mediaType", media_type::kOciIndex}, {"manifests", entries}};
  return *parse_manifest(j.dump()).index;
}

std::string error_of(std::function<void()> f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return {};
}

TEST(Manifest, ParsesOciAndDockerManifests) {
  for (auto [mt, cfg, lay] :
       {std::tuple{media_type::kOciManifest, media_type::kOciConfig, media_type::kOciLayerGzip},
        std::tuple{media_type::kDockerManifest, media_type::kDockerConfig,
                   media_type::kDockerLayerGzip}}) {
    json j = {{"schemaVersion", 2},
              {"mediaType", mt},
              {"config", desc(std::string(cfg), 'c', 123)},
              {"layers", {desc(std::string(lay), 'a', 10), desc(std::string(lay), 'b', 20)}},
              {"annotations", {{"k", "v"}}}};
    ParsedManifest p = parse_manifest(j.dump(), mt);
    ASSERT_FALSE(p.is_index());
    ASSERT_TRUE(p.manifest);
    EXPECT_EQ(p.media_type, mt);
    EXPECT_EQ(p.manifest->config.digest.str(), dg('c'));
    EXPECT_EQ(p.manifest->config.size, 123);
    ASSERT_EQ(p.manifest->layers.size(), 2u);
    EXPECT_EQ(p.manifest->layers[1].media_type, lay);
    EXPECT_EQ(p.manifest->layers[1].size, 20);
    EXPECT_EQ(p.manifest->annotations.at("k"), "v");
  }
}

TEST(Manifest, MediaTypeFromContentTypeOrShape) {
  json m = {{"schemaVersion", 2}, {"config", desc("x", 'c', 1)}, {"layers", json::array()}};
  EXPECT_EQ(parse_manifest(m.dump()).media_type, media_type::kOciManifest);
  EXPECT_EQ(parse_manifest(m.dump(), std::string(media_type::kDockerManifest) + "; charset=utf-8")
                .media_type,
            media_type::kDockerManifest);
  json i = {{"schemaVersion", 2}, {"manifests", json::array()}};
  EXPECT_TRUE(parse_manifest(i.dump(), "application/json").is_index());
}

TEST(Manifest, RefusesSchema1AndConflicts) {
  json s1 = {{"schemaVersion", 1}, {"name", "x"}, {"tag", "y"}, {"fsLayers", json::array()}};
  std::string e = error_of([&] { parse_manifest(s1.dump(), media_type::kDockerSchema1Signed); });
  EXPECT_NE(e.find("schema 1"), std::string::npos) << e;
  e = error_of([&] { parse_manifest(s1.dump(), "application/json"); });
  EXPECT_NE(e.find("schema 1"), std::string::npos) << e;
  json m = {{"schemaVersion", 2},
            {"mediaType", media_type::kOciManifest},
            {"config", desc("x", 'c', 1)},
            {"layers", json::array()}};
  e = error_of([&] { parse_manifest(m.dump(), media_type::kDockerManifest); });
  EXPECT_NE(e.find("does not match the Content-Type"), std::string::npos) << e;
}

TEST(Manifest, RejectsMalformedDocuments) {
  EXPECT_NE(error_of([] {
              parse_manifest("{not json", "", "manifest of x");
            }).find("invalid manifest of x: not valid JSON"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_manifest("[]"); }).find("not a JSON object"), std::string::npos);
  json bad_digest = {{"schemaVersion", 2},
                     {"mediaType", media_type::kOciManifest},
                     {"config", {{"mediaType", "x"}, {"digest", "sha256:nothex"}, {"size", 1}}},
                     {"layers", json::array()}};
  EXPECT_NE(error_of([&] { parse_manifest(bad_digest.dump()); }).find("not a valid digest"),
            std::string::npos);
  json neg = {{"schemaVersion", 2},
              {"mediaType", media_type::kOciManifest},
              {"config", desc("x", 'c', -1)},
              {"layers", json::array()}};
  EXPECT_NE(error_of([&] { parse_manifest(neg.dump()); }).find("negative size"), std::string::npos);
  json no_layers = {
      {"schemaVersion", 2}, {"mediaType", media_type::kOciManifest}, {"config", desc("x", 'c', 1)}};
  EXPECT_NE(error_of([&] { parse_manifest(no_layers.dump()); }).find("\"layers\""),
            std::string::npos);
  json v3 = {{"schemaVersion", 3}, {"manifests", json::array()}};
  EXPECT_NE(error_of([&] { parse_manifest(v3.dump()); }).find("schemaVersion"), std::string::npos);
  json other = {{"schemaVersion", 2}, {"mediaType", "application/vnd.example+json"}};
  EXPECT_NE(error_of([&] { parse_manifest(other.dump()); }).find("unsupported media type"),
            std::string::npos);
  std::string huge(kMaxManifestBytes + 1, ' ');
  EXPECT_NE(error_of([&] { parse_manifest(huge); }).find("larger than"), std::string::npos);
}

TEST(Platform, ParseAndNormalize) {
  EXPECT_EQ(Platform::parse("linux/amd64").str(), "linux/amd64");
  EXPECT_EQ(Platform::parse("linux/aarch64").str(), "linux/arm64");
  EXPECT_EQ(Platform::parse("linux/arm64/v8").str(), "linux/arm64");
  EXPECT_EQ(Platform::parse("linux/arm").str(), "linux/arm/v7");
  EXPECT_EQ(Platform::parse("linux/armhf").str(), "linux/arm/v7");
  EXPECT_EQ(Platform::parse("linux/arm/6").str(), "linux/arm/v6");
  EXPECT_EQ(Platform::parse("Linux/x86_64").str(), "linux/amd64");
  EXPECT_EQ(Platform::parse("linux/i386").str(), "linux/386");
  EXPECT_THROW(Platform::parse("linux"), Error);
  EXPECT_THROW(Platform::parse("linux//v7"), Error);
  EXPECT_THROW(Platform::parse("linux/amd64/v2/x"), Error);
  EXPECT_NE(error_of([] { Platform::parse("linux/am d64"); }).find("not allowed"),
            std::string::npos);
  Platform h = host_platform();
  EXPECT_EQ(h.os, "linux");
  EXPECT_FALSE(h.architecture.empty());
}

TEST(Platform, SelectsLikeContainerd) {
  Index idx =
      index_of({plat_entry('1', "linux", "amd64"), plat_entry('2', "linux", "arm64", "v8"),
                plat_entry('3', "linux", "arm", "v6"), plat_entry('4', "linux", "arm", "v7"),
                plat_entry('5', "unknown", "unknown"), plat_entry('6', "linux", "386")});
  EXPECT_EQ(select_platform(idx, Platform::parse("linux/amd64"), "x").digest.str(), dg('1'));
  // arm64 with and without the v8 variant is the same platform.
  EXPECT_EQ(select_platform(idx, Platform::parse("linux/arm64"), "x").digest.str(), dg('2'));
  EXPECT_EQ(select_platform(idx, Platform::parse("linux/arm64/v8"), "x").digest.str(), dg('2'));
  // arm/v7 prefers v7 over v6 whatever the order; arm/v6 cannot run v7.
  EXPECT_EQ(select_platform(idx, Platform::parse("linux/arm/v7"), "x").digest.str(), dg('4'));
  EXPECT_EQ(select_platform(idx, Platform::parse("linux/arm/v6"), "x").digest.str(), dg('3'));
  // Fallbacks: arm/v8 falls back to v7; amd64/v3 to amd64.
  EXPECT_EQ(select_platform(idx, Platform::parse("linux/arm/v8"), "x").digest.str(), dg('4'));
  EXPECT_EQ(select_platform(idx, Platform::parse("linux/amd64/v3"), "x").digest.str(), dg('1'));
  // An arm64 host runs 32-bit arm images when nothing better exists; an amd64 host runs 386.
  Index armonly =
      index_of({plat_entry('3', "linux", "arm", "v6"), plat_entry('4', "linux", "arm", "v7")});
  EXPECT_EQ(select_platform(armonly, Platform::parse("linux/arm64"), "x").digest.str(), dg('4'));
  Index x86 = index_of({plat_entry('6', "linux", "386")});
  EXPECT_EQ(select_platform(x86, Platform::parse("linux/amd64"), "x").digest.str(), dg('6'));
}

TEST(Platform, AttestationsNeverChosenAndErrorListsAvailable) {
  json att = plat_entry('9', "unknown", "unknown");
  att["annotations"] = {{"vnd.docker.reference.type", "attestation-manifest"}};
  Index idx =
      index_of({att, plat_entry('1', "linux", "amd64"), plat_entry('2', "linux", "arm64", "v8")});
  std::string e =
      error_of([&] { select_platform(idx, Platform::parse("linux/riscv64"), "example.com/a:b"); });
  EXPECT_EQ(e,
            "no image for platform linux/riscv64 in example.com/a:b (available: linux/amd64, "
            "linux/arm64)");
  Index only_att = index_of({att});
  e = error_of([&] { select_platform(only_att, Platform::parse("linux/amd64"), "y"); });
  EXPECT_NE(e.find("available: none"), std::string::npos) << e;
  // An entry without a platform is acceptable, but only after real matches.
  json noplat = desc(std::string(media_type::kOciManifest), '7', 5);
  Index mixed = index_of({noplat, plat_entry('1', "linux", "amd64")});
  EXPECT_EQ(select_platform(mixed, Platform::parse("linux/amd64"), "x").digest.str(), dg('1'));
  EXPECT_EQ(select_platform(mixed, Platform::parse("linux/s390x"), "x").digest.str(), dg('7'));
}

}  // namespace

TEST(Platform, ReadFromAConfigLikeFromAnIndexEntry) {
  // One reader: an index entry's platform object and an image config's top-level fields.
  json fields = {{"os", "Linux"},
                 {"architecture", "x86_64"},
                 {"variant", "V1"},
                 {"os.version", "10.0"},
                 {"os.features", {"a", 1, "b"}}};
  json entry = plat_entry('1', "linux", "amd64");
  entry["platform"] = fields;
  Platform from_index = *index_of({entry}).manifests[0].platform;
  EXPECT_EQ(from_index, read_platform(fields, "x"));
  EXPECT_EQ(from_index.os, "Linux");  // as written: normalized where it is used
  EXPECT_EQ(from_index.os_features, (std::vector<std::string>{"a", "b"}));
  json config = fields;
  config["config"] = {{"Cmd", {"/bin/sh"}}};
  Platform from_config = platform_of_config(config.dump(), "x");
  EXPECT_EQ(from_config, normalize(from_index));
  EXPECT_EQ(from_config.str(), "linux/amd64");
  EXPECT_EQ(
      platform_of_config(R"({"os":"linux","architecture":"ARM64","variant":"v8"})", "x").str(),
      "linux/arm64");
  EXPECT_EQ(platform_of_config(R"({"os":null})", "x"), Platform{});
  EXPECT_EQ(platform_of_config("[1]", "x"), Platform{});
  EXPECT_EQ(platform_of_config("not json", "x"), Platform{});
  for (const char* bad : {R"({"os":5})", R"({"architecture":["amd64"]})", R"({"variant":{}})",
                          R"({"os.version":1.5})"}) {
    std::string e = error_of([&] { platform_of_config(bad, "image config c"); });
    EXPECT_EQ(e.rfind("invalid image config c: \"", 0), 0u) << bad << ": " << e;
    EXPECT_NE(e.find("\" is not a string"), std::string::npos) << bad << ": " << e;
    std::string entry_error = error_of([&] {
      json d = plat_entry('1', "linux", "amd64");
      d["platform"] = json::parse(bad);
      index_of({d});
    });
    EXPECT_NE(entry_error.find(e.substr(e.find(": ") + 2)), std::string::npos) << entry_error;
  }
}
