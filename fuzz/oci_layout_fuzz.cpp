// An OCI image layout's index.json on arbitrary bytes (the first byte picks the platform
// wanted): parsing, the choice by tag (org.opencontainers.image.ref.name) and the choice of a
// platform. Errors must be img2vm::Error. For what is accepted:
//   - the parsed index round-trips through JSON to an equal index;
//   - the entry chosen by a tag carries that tag; with no tag, only a one-entry index chooses;
//   - the entry chosen for a platform is a runnable image (not an attestation), its platform
//     is compatible with the one wanted, and no entry matches better (ties go to the first);
//     when none is chosen, no entry would have matched.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>

#include "img2vm/base/error.hpp"
#include "img2vm/registry/image_source.hpp"
#include "img2vm/registry/manifest.hpp"
#include "img2vm/registry/media_types.hpp"
#include "img2vm/registry/store.hpp"

using namespace img2vm;
using namespace img2vm::registry;
using nlohmann::json;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

json to_json(const Descriptor& d) {
  json j = {{"digest", d.digest.str()}, {"size", d.size}};
  if (!d.media_type.empty()) j["mediaType"] = d.media_type;
  if (!d.artifact_type.empty()) j["artifactType"] = d.artifact_type;
  if (!d.urls.empty()) j["urls"] = d.urls;
  if (!d.annotations.empty()) j["annotations"] = d.annotations;
  if (d.platform) {
    const Platform& p = *d.platform;
    json pj = {{"os", p.os},
               {"architecture", p.architecture},
               {"variant", p.variant},
               {"os.version", p.os_version}};
    if (!p.os_features.empty()) pj["os.features"] = p.os_features;
    j["platform"] = pj;
  }
  return j;
}

std::string to_json(const Index& idx) {
  json j = {{"schemaVersion", 2}, {"mediaType", idx.media_type}, {"manifests", json::array()}};
  for (const Descriptor& d : idx.manifests) j["manifests"].push_back(to_json(d));
  if (!idx.annotations.empty()) j["annotations"] = idx.annotations;
  return j.dump();
}

std::string ref_name(const Descriptor& d) {
  auto it = d.annotations.find(std::string(kRefNameAnnotation));
  return it == d.annotations.end() ? "" : it->second;
}

// select_platform's order: the position of the entry's platform among those compatible with
// `want`, ok.size() for an entry without a platform; nullopt when the entry cannot be chosen.
std::optional<size_t> rank(const Descriptor& d, const std::vector<Platform>& ok) {
  if (is_attestation(d)) return std::nullopt;
  if (!d.media_type.empty() && !media_type::is_image_manifest(d.media_type)) return std::nullopt;
  if (!d.platform) return ok.size();
  Platform have = normalize(*d.platform);
  for (size_t i = 0; i < ok.size(); ++i)
    if (ok[i].os == have.os && ok[i].architecture == have.architecture &&
        ok[i].variant == have.variant)
      return i;
  return std::nullopt;
}

void check_tags(const Index& idx) {
  try {
    const Descriptor& d = select_layout_entry(idx, "", "fuzz");
    check(idx.manifests.size() == 1 && &d == &idx.manifests[0]);
  } catch (const Error& e) {
    check(idx.manifests.size() != 1 && e.kind() == ErrorKind::kInvalidArgument);
  }
  std::set<std::string> tried;
  for (const Descriptor& d : idx.manifests) {
    std::string tag = ref_name(d);
    if (tag.empty() || tried.size() >= 8 || !tried.insert(tag).second) continue;
    check(ref_name(select_layout_entry(idx, tag, "fuzz")) == tag);  // a present tag never fails
  }
}

void check_platform(const Index& idx, const Platform& want) {
  std::vector<Platform> ok = compatible_platforms(want);
  const Descriptor* best = nullptr;
  size_t best_rank = ok.size() + 1;
  for (const Descriptor& d : idx.manifests)
    if (auto r = rank(d, ok); r && *r < best_rank) {
      best = &d;
      best_rank = *r;
    }
  try {
    const Descriptor& got = select_platform(idx, want, "fuzz");
    check(best == &got);
    check(!is_attestation(got));
    if (got.platform) check(rank(got, ok).value_or(ok.size()) < ok.size());
  } catch (const Error& e) {
    check(best == nullptr && e.kind() == ErrorKind::kUnsupported);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const char* const kWant[] = {"linux/amd64",   "linux/arm64", "linux/arm/v6",
                                      "linux/arm/v7",  "linux/386",   "linux/amd64/v3",
                                      "windows/amd64", "linux/s390x"};
  Platform want = Platform::parse(kWant[data[0] % (sizeof kWant / sizeof kWant[0])]);
  std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  ParsedManifest p;
  try {
    p = parse_manifest(body, media_type::kOciIndex, "index.json");
  } catch (const Error&) {
    return 0;
  }
  if (!p.index) return 0;  // open_image_source refuses it
  const Index& idx = *p.index;
  ParsedManifest again = parse_manifest(to_json(idx), media_type::kOciIndex, "index.json");
  check(again.index && *again.index == idx);
  check_tags(idx);
  check_platform(idx, want);
  return 0;
}
