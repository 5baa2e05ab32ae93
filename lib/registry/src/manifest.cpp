#include "img2vm/registry/manifest.hpp"

#include <sys/utsname.h>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>

#include "img2vm/base/ascii.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/registry/media_types.hpp"
#include "platform_json.hpp"

namespace img2vm::registry {

using nlohmann::json;

namespace {

[[noreturn]] void bad(std::string_view what, const std::string& msg) {
  throw Error(ErrorKind::kIntegrity, "invalid " + std::string(what) + ": " + msg);
}

std::string get_string(const json& j, const char* key, std::string_view what, bool required) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) bad(what, std::string("missing \"") + key + "\"");
    return {};
  }
  if (!it->is_string()) bad(what, std::string("\"") + key + "\" is not a string");
  return it->get<std::string>();
}

std::map<std::string, std::string> get_annotations(const json& j, std::string_view what) {
  std::map<std::string, std::string> out;
  auto it = j.find("annotations");
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_object()) bad(what, "\"annotations\" is not an object");
  for (auto& [k, v] : it->items()) {
    if (!v.is_string()) bad(what, "annotation \"" + k + "\" is not a string");
    out[k] = v.get<std::string>();
  }
  return out;
}

Descriptor parse_descriptor(const json& j, std::string_view what) {
  if (!j.is_object()) bad(what, "a descriptor is not an object");
  Descriptor d;
  d.media_type = get_string(j, "mediaType", what, false);
  std::string dg = get_string(j, "digest", what, true);
  if (!Digest::valid(dg))
    bad(what, "descriptor digest '" + dg.substr(0, 100) + "' is not a valid digest");
  d.digest = Digest::parse(dg);
  auto sz = j.find("size");
  if (sz == j.end()) bad(what, "descriptor " + dg + " has no size");
  if (sz->is_number_unsigned()) {
    auto v = sz->get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      bad(what, "descriptor " + dg + " size is too large");
    d.size = static_cast<int64_t>(v);
  } else if (sz->is_number_integer()) {
    d.size = sz->get<int64_t>();
    if (d.size < 0) bad(what, "descriptor " + dg + " has a negative size");
  } else {
    bad(what, "descriptor " + dg + " size is not an integer");
  }
  d.annotations = get_annotations(j, what);
  d.artifact_type = get_string(j, "artifactType", what, false);
  if (auto u = j.find("urls"); u != j.end() && !u->is_null()) {
    if (!u->is_array()) bad(what, "\"urls\" is not an array");
    for (const auto& x : *u) {
      if (!x.is_string()) bad(what, "a url is not a string");
      d.urls.push_back(x.get<std::string>());
    }
  }
  if (auto p = j.find("platform"); p != j.end() && !p->is_null()) {
    if (!p->is_object()) bad(what, "\"platform\" is not an object");
    d.platform = read_platform(*p, what);
  }
  return d;
}

bool generic_content_type(std::string_view ct) {
  return ct.empty() || ct == "application/json" || ct == "text/plain" ||
         ct == "application/octet-stream" || ct.substr(0, 11) == "text/plain;";
}

std::string_view strip_params(std::string_view ct) {
  size_t semi = ct.find(';');
  if (semi != std::string_view::npos) ct = ct.substr(0, semi);
  while (!ct.empty() && ct.back() == ' ') ct.remove_suffix(1);
  return ct;
}

}  // namespace

Platform read_platform(const json& j, std::string_view what) {
  Platform p;
  p.os = get_string(j, "os", what, false);
  p.architecture = get_string(j, "architecture", what, false);
  p.variant = get_string(j, "variant", what, false);
  p.os_version = get_string(j, "os.version", what, false);
  if (auto f = j.find("os.features"); f != j.end() && f->is_array())
    for (const auto& x : *f)
      if (x.is_string()) p.os_features.push_back(x.get<std::string>());
  return p;
}

Platform platform_of_config(std::string_view config, std::string_view what) {
  json j = json::parse(config.begin(), config.end(), nullptr, false);
  if (!j.is_object()) return {};
  return normalize(read_platform(j, what));
}

Platform Platform::parse(std::string_view text) {
  Platform p;
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t slash = text.find('/', start);
    parts.emplace_back(text.substr(
        start, slash == std::string_view::npos ? std::string_view::npos : slash - start));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  auto fail = [&](const std::string& why) {
    throw Error(ErrorKind::kInvalidArgument, "invalid platform '" + std::string(text) +
                                                 "': " + why +
                                                 " (expected os/arch[/variant], e.g. linux/arm64)");
  };
  if (parts.size() < 2 || parts.size() > 3) fail("wrong number of '/'-separated parts");
  for (const auto& s : parts) {
    if (s.empty()) fail("empty part");
    for (char c : s)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.')
        fail("character '" + std::string(1, c) + "' is not allowed");
  }
  p.os = parts[0];
  p.architecture = parts[1];
  if (parts.size() == 3) p.variant = parts[2];
  return normalize(p);
}

std::string Platform::str() const {
  std::string s =
      (os.empty() ? "unknown" : os) + "/" + (architecture.empty() ? "unknown" : architecture);
  if (!variant.empty()) s += "/" + variant;
  return s;
}

Platform normalize(Platform p) {
  p.os = ascii_lower(p.os);
  p.architecture = ascii_lower(p.architecture);
  p.variant = ascii_lower(p.variant);
  const std::string& a = p.architecture;
  if (a == "i386") {
    p.architecture = "386";
    p.variant.clear();
  } else if (a == "x86_64" || a == "x86-64" || a == "amd64") {
    p.architecture = "amd64";
    if (p.variant == "v1") p.variant.clear();
  } else if (a == "aarch64" || a == "arm64") {
    p.architecture = "arm64";
    if (p.variant == "8" || p.variant == "v8" || p.variant == "v8.0") p.variant.clear();
  } else if (a == "armhf") {
    p.architecture = "arm";
    p.variant = "v7";
  } else if (a == "armel") {
    p.architecture = "arm";
    p.variant = "v6";
  } else if (a == "arm") {
    if (p.variant.empty() || p.variant == "7")
      p.variant = "v7";
    else if (p.variant == "5" || p.variant == "6" || p.variant == "8")
      p.variant = "v" + p.variant;
  }
  return p;
}

Platform host_platform() {
  utsname u{};
  ::uname(&u);
  Platform p;
  p.os = "linux";
  p.architecture = u.machine;
  if (p.architecture.rfind("armv7", 0) == 0) {
    p.architecture = "arm";
    p.variant = "v7";
  } else if (p.architecture.rfind("armv6", 0) == 0) {
    p.architecture = "arm";
    p.variant = "v6";
  }
  return normalize(p);
}

std::vector<Platform> compatible_platforms(const Platform& want_in) {
  Platform want = normalize(want_in);
  std::vector<Platform> v{want};
  auto variant_num = [](const std::string& var) -> int {
    if (var.size() < 2 || var[0] != 'v') return -1;
    for (size_t i = 1; i < var.size(); ++i)
      if (var[i] < '0' || var[i] > '9') return -1;
    return var.size() > 4 ? -1 : std::stoi(var.substr(1));
  };
  auto with = [&](std::string arch, std::string var) {
    Platform p = want;
    p.architecture = std::move(arch);
    p.variant = std::move(var);
    return p;
  };
  if (want.architecture == "amd64") {
    for (int n = variant_num(want.variant) - 1; n >= 2; --n)
      v.push_back(with("amd64", "v" + std::to_string(n)));
    if (!want.variant.empty()) v.push_back(with("amd64", ""));
    v.push_back(with("386", ""));
  } else if (want.architecture == "arm") {
    for (int n = variant_num(want.variant) - 1; n >= 5; --n)
      v.push_back(with("arm", "v" + std::to_string(n)));
  } else if (want.architecture == "arm64") {
    for (int n = 8; n >= 5; --n) v.push_back(with("arm", "v" + std::to_string(n)));
  }
  return v;
}

bool is_attestation(const Descriptor& d) {
  auto it = d.annotations.find("vnd.docker.reference.type");
  if (it != d.annotations.end() && it->second == "attestation-manifest") return true;
  return d.platform && d.platform->os == "unknown" && d.platform->architecture == "unknown";
}

const Descriptor& select_platform(const Index& index, const Platform& want, std::string_view what) {
  std::vector<Platform> ok = compatible_platforms(want);
  const Descriptor* best = nullptr;
  size_t best_rank = ok.size() + 1;
  for (const Descriptor& d : index.manifests) {
    if (is_attestation(d)) continue;
    if (!media_type::is_image_manifest(d.media_type) && !d.media_type.empty()) continue;
    size_t rank = ok.size();  // no platform: acceptable, after every real match
    if (d.platform) {
      Platform have = normalize(*d.platform);
      rank = ok.size() + 1;
      for (size_t i = 0; i < ok.size(); ++i)
        if (ok[i].os == have.os && ok[i].architecture == have.architecture &&
            ok[i].variant == have.variant) {
          rank = i;
          break;
        }
    }
    if (rank < best_rank) {
      best = &d;
      best_rank = rank;
    }
  }
  if (best && best_rank <= ok.size()) return *best;
  std::string avail;
  for (const Descriptor& d : index.manifests) {
    if (is_attestation(d) || !d.platform) continue;
    std::string s = normalize(*d.platform).str();
    if (avail.find(s) != std::string::npos) continue;
    if (!avail.empty()) avail += ", ";
    avail += s;
  }
  throw Error(ErrorKind::kUnsupported,
              "no image for platform " + normalize(want).str() + " in " + std::string(what) +
                  " (available: " + (avail.empty() ? "none" : avail) + ")");
}

ParsedManifest parse_manifest(std::string_view bytes, std::string_view content_type_in,
                              std::string_view what) {
  if (bytes.size() > kMaxManifestBytes)
    throw Error(ErrorKind::kLimit, std::string(what) + " is larger than " +
                                       std::to_string(kMaxManifestBytes >> 20) + " MiB");
  std::string_view content_type = strip_params(content_type_in);
  if (media_type::is_schema1(content_type) && content_type != "application/json")
    throw Error(ErrorKind::kUnsupported,
                std::string(what) +
                    " is a Docker schema 1 manifest, which is deprecated and not supported; "
                    "push the image again with a current client");
  json j = json::parse(bytes.begin(), bytes.end(), nullptr, false);
  if (j.is_discarded()) bad(what, "not valid JSON");
  if (!j.is_object()) bad(what, "not a JSON object");
  std::string mt = get_string(j, "mediaType", what, false);
  auto sv = j.find("schemaVersion");
  if (sv != j.end() && sv->is_number_integer() && sv->get<int64_t>() == 1)
    throw Error(ErrorKind::kUnsupported,
                std::string(what) +
                    " is a Docker schema 1 manifest, which is deprecated and not supported; "
                    "push the image again with a current client");
  if (j.contains("fsLayers") || media_type::is_schema1(mt))
    throw Error(ErrorKind::kUnsupported,
                std::string(what) +
                    " is a Docker schema 1 manifest, which is deprecated and not supported; "
                    "push the image again with a current client");
  if (sv == j.end() || !sv->is_number_integer() || sv->get<int64_t>() != 2)
    bad(what, "schemaVersion is not 2");
  if (!mt.empty() && !generic_content_type(content_type) && mt != content_type)
    bad(what,
        "its mediaType " + mt + " does not match the Content-Type " + std::string(content_type));
  if (mt.empty())
    mt = generic_content_type(content_type) ? std::string() : std::string(content_type);
  if (mt.empty()) {
    // OCI allows mediaType to be omitted; tell the two kinds apart by their fields.
    if (j.contains("manifests"))
      mt = media_type::kOciIndex;
    else if (j.contains("config") || j.contains("layers"))
      mt = media_type::kOciManifest;
    else
      bad(what, "neither an image manifest nor an index");
  }
  ParsedManifest out;
  out.media_type = mt;
  if (media_type::is_index(mt)) {
    auto m = j.find("manifests");
    if (m == j.end() || !m->is_array()) bad(what, "\"manifests\" is missing or not an array");
    Index idx;
    idx.media_type = mt;
    idx.annotations = get_annotations(j, what);
    for (const auto& d : *m) idx.manifests.push_back(parse_descriptor(d, what));
    out.index = std::move(idx);
  } else if (media_type::is_image_manifest(mt)) {
    auto c = j.find("config");
    if (c == j.end()) bad(what, "missing \"config\"");
    Manifest man;
    man.media_type = mt;
    man.config = parse_descriptor(*c, what);
    man.annotations = get_annotations(j, what);
    auto l = j.find("layers");
    if (l == j.end() || !l->is_array()) bad(what, "\"layers\" is missing or not an array");
    for (const auto& d : *l) man.layers.push_back(parse_descriptor(d, what));
    out.manifest = std::move(man);
  } else {
    throw Error(ErrorKind::kUnsupported, std::string(what) + " has unsupported media type " + mt);
  }
  return out;
}

}  // namespace img2vm::registry
