#include "img2vm/registry/image_source.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"
#include "img2vm/registry/docker_archive.hpp"
#include "img2vm/registry/media_types.hpp"
#include "img2vm/registry/reference.hpp"
#include "img2vm/registry/store.hpp"
#include "platform_json.hpp"

namespace img2vm::registry {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Counts and hashes a raw byte stream; at its end checks them against the descriptor.
class VerifyingReader : public BlobReader {
 public:
  VerifyingReader(std::function<size_t(void*, size_t)> raw, Descriptor d, std::string what)
      : raw_(std::move(raw)), d_(std::move(d)), what_(std::move(what)) {}
  size_t read(void* buf, size_t n) override {
    if (done_) return 0;
    size_t r = raw_(buf, n);
    if (r == 0) {
      done_ = true;
      Digest got = hash_.finish();
      if (got_ != static_cast<uint64_t>(d_.size) || got != d_.digest)
        throw Error(ErrorKind::kIntegrity,
                    "blob " + d_.digest.str() + " (" + what_ + ") does not match its descriptor: " +
                        std::to_string(got_) + " bytes hashing to " + got.str());
      return 0;
    }
    got_ += r;
    if (got_ > static_cast<uint64_t>(d_.size))
      throw Error(ErrorKind::kIntegrity, "blob " + d_.digest.str() + " (" + what_ +
                                             ") is larger than " + std::to_string(d_.size) +
                                             " bytes");
    hash_.update(buf, r);
    return r;
  }

 private:
  std::function<size_t(void*, size_t)> raw_;
  Descriptor d_;
  std::string what_;
  Sha256 hash_;
  uint64_t got_ = 0;
  bool done_ = false;
};

std::string read_verified(const fs::path& p, const Descriptor& d, uint64_t max) {
  if (static_cast<uint64_t>(d.size) > max)
    throw Error(ErrorKind::kLimit,
                "blob " + d.digest.str() + " is too large (" + std::to_string(d.size) + " bytes)");
  std::error_code ec;
  if (!fs::exists(p, ec))
    throw Error(ErrorKind::kNotFound,
                "blob " + d.digest.str() + " is missing (" + p.string() + ")");
  std::string data =
      read_file(p, static_cast<uint64_t>(d.size) + 1);  // one more shows a size mismatch
  if (data.size() != static_cast<uint64_t>(d.size) || Digest::sha256_of(data) != d.digest)
    throw Error(ErrorKind::kIntegrity,
                "blob " + d.digest.str() + " (" + p.string() + ") does not match its descriptor");
  return data;
}

// "image config sha256:... of NAME", for errors about it.
std::string config_what(const Manifest& m, const std::string& name) {
  return "image config " + m.config.digest.str() + " of " + name;
}

// A resolved image whose blobs are files in a directory (the store, an OCI layout).
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

  std::string name() const override { return name_; }
  const Manifest& manifest() const override { return manifest_; }
  const std::string& manifest_bytes() const override { return manifest_bytes_; }
  Digest manifest_digest() const override { return manifest_digest_; }
  std::optional<Digest> index_digest() const override { return index_digest_; }
  std::optional<std::string> index_bytes() const override { return index_bytes_; }
  Platform platform() const override {
    return platform_ ? *platform_
                     : platform_of_config(config_bytes(), config_what(manifest_, name_));
  }
  std::string config_bytes() const override {
    return read_verified(path_of(manifest_.config.digest), manifest_.config, kMaxConfigBytes);
  }
  std::unique_ptr<BlobReader> open_blob(const Descriptor& d) const override {
    return open_file_blob(path_of(d.digest), d);
  }
  std::optional<fs::path> blob_path(const Descriptor& d) const override {
    return path_of(d.digest);
  }

  // Loads manifest `d` (an image manifest or an index to select from).
  void load(const Descriptor& top, const Platform& want) {
    std::string bytes = read_verified(path_of(top.digest), top, kMaxManifestBytes);
    ParsedManifest p =
        parse_manifest(bytes, top.media_type, "manifest " + top.digest.str() + " of " + name_);
    Descriptor chosen = top;
    if (p.index) {
      index_bytes_ = bytes;
      index_digest_ = top.digest;
      chosen = select_platform(*p.index, want, name_);
      bytes = read_verified(path_of(chosen.digest), chosen, kMaxManifestBytes);
      p = parse_manifest(bytes, chosen.media_type,
                         "manifest " + chosen.digest.str() + " of " + name_);
      if (!p.manifest)
        throw Error(ErrorKind::kUnsupported, name_ + ": nested indexes are not supported");
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
  if (dir.empty())
    throw Error(ErrorKind::kInvalidArgument,
                "invalid source '" + spec + "': expected oci:DIR[:TAG]");
  fs::path root = fs::absolute(dir);
  fs::path idx = root / "index.json";
  if (!fs::exists(idx))
    throw Error(ErrorKind::kNotFound,
                "no OCI image layout at " + root.string() + " (no index.json)");
  ParsedManifest p =
      parse_manifest(read_file(idx, kMaxManifestBytes), media_type::kOciIndex, idx.string());
  if (!p.index) throw Error(ErrorKind::kIntegrity, idx.string() + " is not an OCI index");
  const Descriptor& pick = select_layout_entry(*p.index, tag, "oci:" + root.string());
  auto src = std::make_unique<LocalSource>();
  std::string ref_name;
  if (auto it = pick.annotations.find(std::string(kRefNameAnnotation));
      it != pick.annotations.end())
    ref_name = it->second;
  src->name_ =
      name_for(ref_name, "oci:" + root.string() + (ref_name.empty() ? "" : ":" + ref_name));
  src->path_of = [root](const Digest& d) { return root / "blobs" / d.algorithm() / d.hex(); };
  src->load(pick, want);
  return src;
}

// The bytes of a regular file, read in place with pread (safe from several threads).
ArchiveBytes file_bytes(const fs::path& path) {
  auto fd = std::make_shared<UniqueFd>(open_file(path, O_RDONLY));
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0) throw_errno("stat " + path.string());
  if (!S_ISREG(st.st_mode))
    throw Error(ErrorKind::kInvalidArgument,
                "docker archive " + path.string() +
                    " is not a regular file; save it to a file first (it is read in place)");
  ArchiveBytes b;
  b.size = static_cast<uint64_t>(st.st_size);
  b.read_at = [fd, path](void* buf, size_t n, uint64_t off) {
    size_t got = 0;
    while (got < n) {
      ssize_t r =
          ::pread(fd->get(), static_cast<char*>(buf) + got, n - got, static_cast<off_t>(off + got));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) throw_errno("read " + path.string());
      if (r == 0) break;
      got += static_cast<size_t>(r);
    }
    return got;
  };
  return b;
}

std::string media_type_by_magic(std::string_view head) {
  if (head.size() >= 2 && head[0] == '\x1f' && head[1] == '\x8b')
    return std::string(media_type::kOciLayerGzip);
  if (head.size() >= 4 && head.substr(0, 4) == "\x28\xb5\x2f\xfd")
    return std::string(media_type::kOciLayerZstd);
  return std::string(media_type::kOciLayer);
}

// A `docker save` tarball read in place (docker_archive.hpp): its blobs are members of the tar,
// the image manifest is made up from manifest.json with the members' digests.
class ArchiveSource : public ImageSource {
 public:
  std::string name_, what_;
  ArchiveBytes bytes_;
  ArchiveIndex index_;
  std::map<Digest, const ArchiveMember*> by_digest_;
  std::string manifest_bytes_, config_;
  Digest manifest_digest_;
  Manifest manifest_;

  std::string name() const override { return name_; }
  const Manifest& manifest() const override { return manifest_; }
  const std::string& manifest_bytes() const override { return manifest_bytes_; }
  Digest manifest_digest() const override { return manifest_digest_; }
  Platform platform() const override {
    return platform_of_config(config_, config_what(manifest_, name_));
  }
  std::string config_bytes() const override { return config_; }
  std::unique_ptr<BlobReader> open_blob(const Descriptor& d) const override {
    auto it = by_digest_.find(d.digest);
    if (it == by_digest_.end())
      throw Error(ErrorKind::kNotFound, "blob " + d.digest.str() + " is not in " + what_);
    const ArchiveMember& m = *it->second;
    if (static_cast<uint64_t>(d.size) != m.size)
      throw Error(ErrorKind::kIntegrity, "blob " + d.digest.str() + " (" + what_ + ": " + m.name +
                                             ") is " + std::to_string(m.size) + " bytes, not " +
                                             std::to_string(d.size));
    return open_member(bytes_, index_, m, what_);
  }
};

std::unique_ptr<ImageSource> open_docker_archive(const std::string& spec) {
  std::string rest = spec.substr(15);
  std::string file = rest, want_ref;
  if (size_t c = rest.find(':'); c != std::string::npos) {
    file = rest.substr(0, c);
    want_ref = rest.substr(c + 1);
  }
  if (file.empty())
    throw Error(ErrorKind::kInvalidArgument,
                "invalid source '" + spec + "': expected docker-archive:FILE[:REF]");
  fs::path path = fs::absolute(file);
  auto src = std::make_unique<ArchiveSource>();
  src->what_ = "docker archive " + path.string();
  const std::string& what = src->what_;
  src->bytes_ = file_bytes(path);
  src->index_ = index_archive(src->bytes_, what);
  if (!src->index_.find("manifest.json"))
    throw Error(ErrorKind::kIntegrity,
                path.string() + " is not a docker archive (no manifest.json)");
  auto images = parse_archive_manifest(
      read_member(src->bytes_, src->index_, "manifest.json", kMaxManifestBytes, what), what);
  DockerArchiveChoice choice = select_archive_image(images, want_ref, what);
  const DockerArchiveImage& img = images[choice.image];
  auto member = [&](const std::string& rel) -> const ArchiveMember& {
    const ArchiveMember* m = src->index_.find(rel);
    if (!m) throw Error(ErrorKind::kIntegrity, what + ": missing member " + rel);
    src->by_digest_[m->digest] = m;
    return *m;
  };
  auto descriptor = [](const ArchiveMember& m, std::string_view mt) {
    return json{{"mediaType", mt}, {"digest", m.digest.str()}, {"size", m.size}};
  };
  const ArchiveMember& cfg = member(img.config);
  src->config_ = read_member(src->bytes_, src->index_, cfg.name, kMaxConfigBytes, what);
  json man = {{"schemaVersion", 2}, {"mediaType", media_type::kOciManifest}};
  man["config"] = descriptor(cfg, media_type::kOciConfig);
  man["layers"] = json::array();
  for (const std::string& l : img.layers) {
    const ArchiveMember& m = member(l);
    man["layers"].push_back(descriptor(m, media_type_by_magic(m.head)));
  }
  src->manifest_bytes_ = man.dump();
  src->manifest_digest_ = Digest::sha256_of(src->manifest_bytes_);
  src->manifest_ = *parse_manifest(src->manifest_bytes_, media_type::kOciManifest, what).manifest;
  src->name_ = choice.name.empty() ? "docker-archive:" + path.string() : choice.name;
  return src;
}

}  // namespace

std::unique_ptr<BlobReader> verifying_reader(std::function<size_t(void*, size_t)> read,
                                             Descriptor d, std::string what) {
  return std::make_unique<VerifyingReader>(std::move(read), std::move(d), std::move(what));
}

std::unique_ptr<BlobReader> open_file_blob(const fs::path& file, const Descriptor& d) {
  auto fd = std::make_shared<UniqueFd>(open_file(file, O_RDONLY));
  return verifying_reader(
      [fd, file](void* buf, size_t n) {
        for (;;) {
          ssize_t r = ::read(fd->get(), buf, n);
          if (r < 0 && errno == EINTR) continue;
          if (r < 0) throw_errno("read " + file.string());
          return static_cast<size_t>(r);
        }
      },
      d, file.string());
}

const Descriptor& select_layout_entry(const Index& index, std::string_view tag,
                                      std::string_view what) {
  const Descriptor* pick = nullptr;
  std::string available;
  for (const auto& d : index.manifests) {
    auto it = d.annotations.find(std::string(kRefNameAnnotation));
    std::string n = it == d.annotations.end() ? "" : it->second;
    if (!n.empty()) available += (available.empty() ? "" : ", ") + n;
    if (!tag.empty() && n == tag) pick = &d;
  }
  if (tag.empty() && index.manifests.size() == 1) pick = &index.manifests[0];
  if (pick) return *pick;
  if (tag.empty())
    throw Error(ErrorKind::kInvalidArgument,
                std::string(what) + " holds " + std::to_string(index.manifests.size()) +
                    " images; name one as oci:DIR:TAG (available: " + available + ")");
  throw Error(ErrorKind::kNotFound, "tag not found: " + std::string(tag) + " in " +
                                        std::string(what) + " (available: " + available + ")");
}

bool is_local_source(const std::string& spec) {
  return spec.rfind("oci:", 0) == 0 || spec.rfind("docker-archive:", 0) == 0;
}

std::unique_ptr<ImageSource> open_image_source(const std::string& spec, const Platform& want) {
  if (spec.rfind("oci:", 0) == 0) return open_oci_layout(spec, want);
  if (spec.rfind("docker-archive:", 0) == 0) return open_docker_archive(spec);
  throw Error(
      ErrorKind::kInvalidArgument,
      "'" + spec + "' is not a local image source (oci:DIR[:TAG] or docker-archive:FILE[:REF])");
}

std::unique_ptr<ImageSource> open_image(const Store& store, const std::string& name) {
  auto img = store.find(name);
  if (!img)
    throw Error(ErrorKind::kNotFound, "image " + name + " is not in the store (" +
                                          store.layout_dir().string() + "); pull it first");
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
