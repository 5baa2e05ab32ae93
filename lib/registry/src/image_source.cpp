#include "img2vm/registry/image_source.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/registry/media_types.hpp"
#include "img2vm/registry/reference.hpp"
#include "img2vm/registry/store.hpp"

namespace img2vm::registry {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

class FileBlobReader : public BlobReader {
 public:
  FileBlobReader(const fs::path& p, Descriptor d) : path_(p), d_(std::move(d)), fd_(open_file(p, O_RDONLY)) {}
  size_t read(void* buf, size_t n) override {
    if (done_) return 0;
    for (;;) {
      ssize_t r = ::read(fd_.get(), buf, n);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) throw_errno("read " + path_.string());
      if (r == 0) {
        done_ = true;
        Digest got = hash_.finish();
        if (got_ != static_cast<uint64_t>(d_.size) || got != d_.digest)
          throw Error(ErrorKind::kIntegrity, "blob " + d_.digest.str() + " (" + path_.string() +
                                                 ") does not match its descriptor: " + std::to_string(got_) +
                                                 " bytes hashing to " + got.str());
        return 0;
      }
      got_ += static_cast<uint64_t>(r);
      if (got_ > static_cast<uint64_t>(d_.size))
        throw Error(ErrorKind::kIntegrity, "blob " + d_.digest.str() + " (" + path_.string() + ") is larger than " +
                                               std::to_string(d_.size) + " bytes");
      hash_.update(buf, static_cast<size_t>(r));
      return static_cast<size_t>(r);
    }
  }

 private:
  fs::path path_;
  Descriptor d_;
  UniqueFd fd_;
  Sha256 hash_;
  uint64_t got_ = 0;
  bool done_ = false;
};

std::string read_verified(const fs::path& p, const Descriptor& d, uint64_t max) {
  if (static_cast<uint64_t>(d.size) > max)
    throw Error(ErrorKind::kLimit, "blob " + d.digest.str() + " is too large (" + std::to_string(d.size) + " bytes)");
  std::error_code ec;
  if (!fs::exists(p, ec)) throw Error(ErrorKind::kNotFound, "blob " + d.digest.str() + " is missing (" + p.string() + ")");
  std::string data = read_file(p);
  if (data.size() != static_cast<uint64_t>(d.size) || Digest::sha256_of(data) != d.digest)
    throw Error(ErrorKind::kIntegrity, "blob " + d.digest.str() + " (" + p.string() + ") does not match its descriptor");
  return data;
}

Platform platform_of_config(const std::string& cfg) {
  json j = json::parse(cfg, nullptr, false);
  Platform p;
  if (j.is_object()) {
    p.os = j.value("os", "");
    p.architecture = j.value("architecture", "");
    p.variant = j.value("variant", "");
  }
  return normalize(p);
}

// A resolved image whose blobs are files in a directory (the store, an OCI layout, an
// unpacked docker archive).
class LocalSource : public ImageSource {
 public:
  std::string name_;
  std::function<fs::path(const Digest&)> path_of;
  std::string manifest_bytes_;
  Digest manifest_digest_;
  Manifest manifest_;
  std::optional<std::string> index_bytes_;
  std::optional<Digest> index_digest_;
  std::optional<Platform> platform_;
  std::shared_ptr<TempDir> keep_;  // owns unpacked files, if any

  std::string name() const override { return name_; }
  const Manifest& manifest() const override { return manifest_; }
  const std::string& manifest_bytes() const override { return manifest_bytes_; }
  Digest manifest_digest() const override { return manifest_digest_; }
  std::optional<Digest> index_digest() const override { return index_digest_; }
  std::optional<std::string> index_bytes() const override { return index_bytes_; }
  Platform platform() const override { return platform_ ? *platform_ : platform_of_config(config_bytes()); }
  std::string config_bytes() const override {
    return read_verified(path_of(manifest_.config.digest), manifest_.config, kMaxConfigBytes);
  }
  std::unique_ptr<BlobReader> open_blob(const Descriptor& d) const override {
    return std::make_unique<FileBlobReader>(path_of(d.digest), d);
  }
  std::optional<fs::path> blob_path(const Descriptor& d) const override { return path_of(d.digest); }

  // Loads manifest `d` (an image manifest or an index to select from).
  void load(const Descriptor& top, const Platform& want) {
    std::string bytes = read_verified(path_of(top.digest), top, kMaxManifestBytes);
    ParsedManifest p = parse_manifest(bytes, top.media_type, "manifest " + top.digest.str() + " of " + name_);
    Descriptor chosen = top;
    if (p.index) {
      index_bytes_ = bytes;
      index_digest_ = top.digest;
      chosen = select_platform(*p.index, want, name_);
      bytes = read_verified(path_of(chosen.digest), chosen, kMaxManifestBytes);
      p = parse_manifest(bytes, chosen.media_type, "manifest " + chosen.digest.str() + " of " + name_);
      if (!p.manifest) throw Error(ErrorKind::kUnsupported, name_ + ": nested indexes are not supported");
    }
    if (chosen.platform) platform_ = normalize(*chosen.platform);
    manifest_bytes_ = std::move(bytes);
    manifest_digest_ = chosen.digest;
    manifest_ = *p.manifest;
  }
};

std::string name_for(const std::string& candidate, const std::string& fallback) {
  if (candidate.find('/') != std::string::npos) {
    try {
      return Reference::parse(candidate).str();
    } catch (const Error&) {
    }
  }
  return fallback;
}

std::unique_ptr<ImageSource> open_oci_layout(const std::string& spec, const Platform& want) {
  std::string rest = spec.substr(4);
  std::string dir = rest, tag;
  if (size_t c = rest.find(':'); c != std::string::npos) {
    dir = rest.substr(0, c);
    tag = rest.substr(c + 1);
  }
  if (dir.empty()) throw Error(ErrorKind::kInvalidArgument, "invalid source '" + spec + "': expected oci:DIR[:TAG]");
  fs::path root = fs::absolute(dir);
  fs::path idx = root / "index.json";
  if (!fs::exists(idx)) throw Error(ErrorKind::kNotFound, "no OCI image layout at " + root.string() + " (no index.json)");
  ParsedManifest p = parse_manifest(read_file(idx), media_type::kOciIndex, idx.string());
  if (!p.index) throw Error(ErrorKind::kIntegrity, idx.string() + " is not an OCI index");
  const Descriptor* pick = nullptr;
  std::string available;
  for (const auto& d : p.index->manifests) {
    auto it = d.annotations.find(std::string(kRefNameAnnotation));
    std::string n = it == d.annotations.end() ? "" : it->second;
    if (!n.empty()) available += (available.empty() ? "" : ", ") + n;
    if (!tag.empty() && n == tag) pick = &d;
  }
  if (tag.empty() && p.index->manifests.size() == 1) pick = &p.index->manifests[0];
  if (!pick) {
    if (tag.empty())
      throw Error(ErrorKind::kInvalidArgument, "oci:" + root.string() + " holds " + std::to_string(p.index->manifests.size()) +
                                                   " images; name one as oci:DIR:TAG (available: " + available + ")");
    throw Error(ErrorKind::kNotFound, "tag not found: " + tag + " in oci:" + root.string() + " (available: " + available + ")");
  }
  auto src = std::make_unique<LocalSource>();
  std::string ref_name;
  if (auto it = pick->annotations.find(std::string(kRefNameAnnotation)); it != pick->annotations.end()) ref_name = it->second;
  src->name_ = name_for(ref_name, "oci:" + root.string() + (ref_name.empty() ? "" : ":" + ref_name));
  src->path_of = [root](const Digest& d) { return root / "blobs" / d.algorithm() / d.hex(); };
  src->load(*pick, want);
  return src;
}

// Safe relative path of a tar member, or empty when it would escape.
std::string clean_member(const char* raw) {
  std::string p = raw ? raw : "";
  while (p.rfind("./", 0) == 0) p = p.substr(2);
  if (p.empty() || p[0] == '/') return {};
  for (size_t s = 0;;) {
    size_t e = p.find('/', s);
    std::string comp = p.substr(s, e == std::string::npos ? std::string::npos : e - s);
    if (comp == "..") return {};
    if (e == std::string::npos) break;
    s = e + 1;
  }
  return p;
}

std::string media_type_by_magic(const fs::path& p) {
  UniqueFd fd = open_file(p, O_RDONLY);
  unsigned char m[4] = {0};
  ssize_t n = ::read(fd.get(), m, sizeof m);
  if (n >= 2 && m[0] == 0x1f && m[1] == 0x8b) return std::string(media_type::kOciLayerGzip);
  if (n >= 4 && m[0] == 0x28 && m[1] == 0xb5 && m[2] == 0x2f && m[3] == 0xfd) return std::string(media_type::kOciLayerZstd);
  return std::string(media_type::kOciLayer);
}

std::unique_ptr<ImageSource> open_docker_archive(const std::string& spec) {
  std::string rest = spec.substr(15);
  std::string file = rest, want_ref;
  if (size_t c = rest.find(':'); c != std::string::npos) {
    file = rest.substr(0, c);
    want_ref = rest.substr(c + 1);
  }
  if (file.empty()) throw Error(ErrorKind::kInvalidArgument, "invalid source '" + spec + "': expected docker-archive:FILE[:REF]");
  fs::path path = fs::absolute(file);
  auto tmp = std::make_shared<TempDir>("img2vm-archive");
  fs::path out = tmp->path() / "files";
  fs::create_directories(out);
  archive* a = archive_read_new();
  archive_read_support_format_tar(a);
  archive_read_support_filter_all(a);
  struct Closer {
    archive* a;
    ~Closer() { archive_read_free(a); }
  } closer{a};
  if (archive_read_open_filename(a, path.c_str(), 1 << 16) != ARCHIVE_OK)
    throw Error(ErrorKind::kNotFound, "cannot open docker archive " + path.string() + ": " + archive_error_string(a));
  archive_entry* e = nullptr;
  int rc;
  while ((rc = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
    if (archive_entry_filetype(e) != AE_IFREG) continue;
    std::string rel = clean_member(archive_entry_pathname(e));
    if (rel.empty()) throw Error(ErrorKind::kIntegrity, path.string() + ": unsafe member path in the archive");
    fs::path dst = out / rel;
    fs::create_directories(dst.parent_path());
    UniqueFd fd = open_file(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const void* buf;
    size_t len;
    la_int64_t off;
    int r;
    while ((r = archive_read_data_block(a, &buf, &len, &off)) == ARCHIVE_OK)
      write_all(fd.get(), std::string_view(static_cast<const char*>(buf), len), dst.string());
    if (r != ARCHIVE_EOF) throw Error(ErrorKind::kIntegrity, path.string() + ": " + archive_error_string(a));
  }
  if (rc != ARCHIVE_EOF) throw Error(ErrorKind::kIntegrity, "docker archive " + path.string() + ": " + archive_error_string(a));
  fs::path mj = out / "manifest.json";
  if (!fs::exists(mj)) throw Error(ErrorKind::kIntegrity, path.string() + " is not a docker archive (no manifest.json)");
  json m = json::parse(read_file(mj), nullptr, false);
  if (!m.is_array() || m.empty()) throw Error(ErrorKind::kIntegrity, path.string() + ": manifest.json is not a non-empty array");
  const json* pick = nullptr;
  std::string chosen_tag;
  std::string norm_want;
  if (!want_ref.empty()) norm_want = Reference::parse(want_ref).str();
  std::string available;
  for (const auto& img : m) {
    if (!img.is_object()) continue;
    if (img.contains("RepoTags") && img["RepoTags"].is_array())
      for (const auto& t : img["RepoTags"]) {
        if (!t.is_string()) continue;
        available += (available.empty() ? "" : ", ") + t.get<std::string>();
        std::string n;
        try {
          n = Reference::parse(t.get<std::string>()).str();
        } catch (const Error&) {
          continue;
        }
        if (norm_want.empty() ? !pick : n == norm_want) {
          if (!pick || !norm_want.empty()) chosen_tag = n;
          pick = &img;
        }
      }
  }
  if (norm_want.empty() && m.size() == 1) pick = &m[0];
  if (!pick) {
    if (!norm_want.empty()) throw Error(ErrorKind::kNotFound, "tag not found: " + want_ref + " in " + path.string() + " (available: " + available + ")");
    throw Error(ErrorKind::kInvalidArgument, path.string() + " holds several images; name one as docker-archive:FILE:REF (available: " + available + ")");
  }
  if (!pick->contains("Config") || !(*pick)["Config"].is_string() || !pick->contains("Layers") || !(*pick)["Layers"].is_array())
    throw Error(ErrorKind::kIntegrity, path.string() + ": manifest.json entry lacks Config or Layers");
  auto member = [&](const std::string& rel) {
    std::string c = clean_member(rel.c_str());
    if (c.empty() || !fs::exists(out / c)) throw Error(ErrorKind::kIntegrity, path.string() + ": missing member " + rel);
    return out / c;
  };
  auto src = std::make_unique<LocalSource>();
  src->keep_ = tmp;
  std::map<std::string, fs::path> by_digest;
  auto describe = [&](const fs::path& f, std::string mt) {
    Descriptor d;
    d.media_type = std::move(mt);
    d.digest = sha256_file(f);
    d.size = static_cast<int64_t>(fs::file_size(f));
    by_digest[d.digest.str()] = f;
    return d;
  };
  json man = {{"schemaVersion", 2}, {"mediaType", media_type::kOciManifest}};
  Descriptor cfg = describe(member((*pick)["Config"].get<std::string>()), std::string(media_type::kOciConfig));
  man["config"] = {{"mediaType", cfg.media_type}, {"digest", cfg.digest.str()}, {"size", cfg.size}};
  man["layers"] = json::array();
  for (const auto& l : (*pick)["Layers"]) {
    if (!l.is_string()) throw Error(ErrorKind::kIntegrity, path.string() + ": a layer path is not a string");
    fs::path f = member(l.get<std::string>());
    Descriptor d = describe(f, media_type_by_magic(f));
    man["layers"].push_back({{"mediaType", d.media_type}, {"digest", d.digest.str()}, {"size", d.size}});
  }
  std::string bytes = man.dump();
  Descriptor top;
  top.media_type = media_type::kOciManifest;
  top.digest = Digest::sha256_of(bytes);
  top.size = static_cast<int64_t>(bytes.size());
  fs::path mf = tmp->path() / "manifest";
  write_file_atomic(mf, bytes);
  by_digest[top.digest.str()] = mf;
  src->name_ = chosen_tag.empty() ? "docker-archive:" + path.string() : chosen_tag;
  src->path_of = [by_digest, tmp](const Digest& d) {
    auto it = by_digest.find(d.str());
    return it == by_digest.end() ? tmp->path() / "missing" / d.hex() : it->second;
  };
  src->load(top, host_platform());
  return src;
}

}  // namespace

std::unique_ptr<BlobReader> open_file_blob(const fs::path& file, const Descriptor& d) {
  return std::make_unique<FileBlobReader>(file, d);
}

bool is_local_source(const std::string& spec) { return spec.rfind("oci:", 0) == 0 || spec.rfind("docker-archive:", 0) == 0; }

std::unique_ptr<ImageSource> open_image_source(const std::string& spec, const Platform& want) {
  if (spec.rfind("oci:", 0) == 0) return open_oci_layout(spec, want);
  if (spec.rfind("docker-archive:", 0) == 0) return open_docker_archive(spec);
  throw Error(ErrorKind::kInvalidArgument, "'" + spec + "' is not a local image source (oci:DIR[:TAG] or docker-archive:FILE[:REF])");
}

std::unique_ptr<ImageSource> open_image(const Store& store, const std::string& name) {
  auto img = store.find(name);
  if (!img) throw Error(ErrorKind::kNotFound, "image " + name + " is not in the store (" + store.layout_dir().string() + "); pull it first");
  auto src = std::make_unique<LocalSource>();
  src->name_ = img->name;
  fs::path layout = store.layout_dir();
  src->path_of = [layout](const Digest& d) { return layout / "blobs" / d.algorithm() / d.hex(); };
  src->load(img->manifest, host_platform());
  if (img->manifest.platform) src->platform_ = normalize(*img->manifest.platform);
  src->index_digest_ = img->index_digest;
  return src;
}

}  // namespace img2vm::registry
