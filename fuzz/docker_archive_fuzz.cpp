// docker-archive parsing on arbitrary bytes: the tar member index (plain, or compressed as a
// whole), then manifest.json and the choice of an image. Errors must be img2vm::Error. For
// what is accepted:
//   - every member has a clean name within the bounds, and reading it back (in place from the
//     input for a plain tar, by decompressing again otherwise) gives bytes with its size and
//     digest; for a plain tar they are exactly the input's bytes at its offset;
//   - a parsed manifest.json round-trips through JSON;
//   - a chosen image is valid and carries the tag it was chosen by; choosing by that tag again
//     (or by any available tag) gives an image carrying it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>

#include "img2vm/base/error.hpp"
#include "img2vm/registry/docker_archive.hpp"
#include "img2vm/registry/manifest.hpp"
#include "img2vm/registry/reference.hpp"

using namespace img2vm;
using namespace img2vm::registry;
using nlohmann::json;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

bool carries(const DockerArchiveImage& img, const std::string& name) {
  for (const std::string& t : img.repo_tags) {
    try {
      if (Reference::parse(t).str() == name) return true;
    } catch (const Error&) {
    }
  }
  return false;
}

std::string serialize(const std::vector<DockerArchiveImage>& images) {
  json out = json::array();
  for (const auto& img : images) {
    json j = {{"RepoTags", img.repo_tags}};
    if (img.valid) {
      j["Config"] = img.config;
      j["Layers"] = img.layers;
    }
    out.push_back(j);
  }
  return out.dump();
}

void check_choice(const std::vector<DockerArchiveImage>& images) {
  DockerArchiveChoice c;
  try {
    c = select_archive_image(images, "", "fuzz");
  } catch (const Error&) {
    return;
  }
  check(c.image < images.size());
  check(images[c.image].valid && images[c.image].layers.size() <= kMaxArchiveLayers);
  if (c.name.empty()) {
    check(images.size() == 1);
  } else {
    check(carries(images[c.image], c.name));
    DockerArchiveChoice again = select_archive_image(images, c.name, "fuzz");
    check(again.name == c.name && carries(images[again.image], c.name));
  }
  std::set<std::string> tried;
  for (const auto& img : images)
    for (const std::string& t : img.repo_tags) {
      if (tried.size() >= 8 || !tried.insert(t).second) continue;
      try {
        DockerArchiveChoice by = select_archive_image(images, t, "fuzz");
        check(carries(images[by.image], Reference::parse(t).str()));
      } catch (const Error&) {
      }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  ArchiveBytes src;
  src.size = size;
  src.read_at = [in](void* buf, size_t n, uint64_t off) -> size_t {
    if (off >= in.size()) return 0;
    size_t k = std::min<uint64_t>(n, in.size() - off);
    std::memcpy(buf, in.data() + off, k);
    return k;
  };
  ArchiveLimits lim;
  lim.max_entries = 64;
  lim.max_name_bytes = 256;
  lim.min_expansion = 1u << 20;
  lim.max_ratio = 8;
  ArchiveIndex idx;
  try {
    idx = index_archive(src, "fuzz", lim);
  } catch (const Error&) {
    return 0;
  }
  check(idx.entries <= lim.max_entries && idx.members.size() <= idx.entries);
  const bool plain = idx.compression.empty();
  for (const auto& [name, m] : idx.members) {
    check(m.name == name && clean_member_path(name) == name && name.size() <= lim.max_name_bytes);
    check(idx.find(name) == &m && idx.find("./" + name) == &m);
    check(m.head.size() == std::min<uint64_t>(m.size, 4));
    if (plain) {
      check(m.offset <= size && m.size <= size - m.offset);
      std::string_view bytes = in.substr(m.offset, m.size);
      check(Digest::sha256_of(bytes) == m.digest && bytes.substr(0, m.head.size()) == m.head);
    } else {
      check(m.offset + m.size <= idx.expansion_limit);
    }
    auto r = open_member(src, idx, m, "fuzz");  // throws (and so crashes) if the bytes differ
    char buf[4096];
    uint64_t got = 0;
    for (size_t n; (n = r->read(buf, sizeof buf)) > 0;) got += n;
    check(got == m.size);
  }

  const ArchiveMember* mj = idx.find("manifest.json");
  if (!mj || mj->size > kMaxManifestBytes) return 0;
  std::vector<DockerArchiveImage> images;
  try {
    images = parse_archive_manifest(
        read_member(src, idx, "manifest.json", kMaxManifestBytes, "fuzz"), "fuzz");
  } catch (const Error&) {
    return 0;
  }
  check(!images.empty());
  check(parse_archive_manifest(serialize(images), "fuzz") == images);
  check_choice(images);
  return 0;
}
