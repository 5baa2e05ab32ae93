#include "image_builder.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "img2vm/base/error.hpp"
#include "img2vm/base/fd.hpp"

namespace img2vm::testing {

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

Entry file(std::string path, std::string content, unsigned mode) {
  Entry e;
  e.type = Entry::Type::kFile;
  e.path = std::move(path);
  e.content = std::move(content);
  e.mode = mode;
  return e;
}
Entry dir(std::string path, unsigned mode) {
  Entry e;
  e.type = Entry::Type::kDir;
  e.path = std::move(path);
  e.mode = mode;
  return e;
}
Entry symlink_to(std::string path, std::string target) {
  Entry e;
  e.type = Entry::Type::kSymlink;
  e.path = std::move(path);
  e.target = std::move(target);
  e.mode = 0777;
  return e;
}
Entry hardlink_to(std::string path, std::string target) {
  Entry e;
  e.type = Entry::Type::kHardlink;
  e.path = std::move(path);
  e.target = std::move(target);
  return e;
}
Entry chardev(std::string path, unsigned major, unsigned minor, unsigned mode) {
  Entry e;
  e.type = Entry::Type::kCharDev;
  e.path = std::move(path);
  e.dev_major = major;
  e.dev_minor = minor;
  e.mode = mode;
  return e;
}
Entry blockdev(std::string path, unsigned major, unsigned minor, unsigned mode) {
  Entry e = chardev(std::move(path), major, minor, mode);
  e.type = Entry::Type::kBlockDev;
  return e;
}
Entry fifo(std::string path, unsigned mode) {
  Entry e;
  e.type = Entry::Type::kFifo;
  e.path = std::move(path);
  e.mode = mode;
  return e;
}
Entry whiteout(const std::string& path) {
  fs::path p(path);
  fs::path parent = p.parent_path();
  return file((parent / (".wh." + p.filename().string())).string(), "", 0644);
}
Entry opaque(const std::string& dir_path) {
  return file((fs::path(dir_path) / ".wh..wh..opq").string(), "", 0644);
}

namespace {

struct ArchiveWriteFree {
  void operator()(archive* a) const { archive_write_free(a); }
};
struct EntryFree {
  void operator()(archive_entry* e) const { archive_entry_free(e); }
};

[[noreturn]] void archive_fail(archive* a, const std::string& what) {
  throw Error(
      ErrorKind::kInternal,
      what + ": " + (archive_error_string(a) ? archive_error_string(a) : "libarchive error"));
}

la_ssize_t append_cb(archive*, void* ud, const void* buf, size_t n) {
  static_cast<std::string*>(ud)->append(static_cast<const char*>(buf), n);
  return static_cast<la_ssize_t>(n);
}

// One tar stream (optionally compressed) from entries; deterministic for the same input.
std::string write_tar(const std::vector<Entry>& entries, LayerCompression comp) {
  std::string out;  // declared first: the archive, freed first, still writes into it on the way out
  std::unique_ptr<archive, ArchiveWriteFree> a(archive_write_new());
  archive_write_set_format_pax_restricted(a.get());
  archive_write_set_bytes_in_last_block(a.get(), 1);
  switch (comp) {
    case LayerCompression::kGzip:
      archive_write_add_filter_gzip(a.get());
      archive_write_set_filter_option(a.get(), "gzip", "timestamp",
                                      nullptr);  // no mtime in the header
      break;
    case LayerCompression::kZstd:
      archive_write_add_filter_zstd(a.get());
      break;
    case LayerCompression::kNone:
      break;
  }
  if (archive_write_open2(a.get(), &out, nullptr, append_cb, nullptr, nullptr) != ARCHIVE_OK)
    archive_fail(a.get(), "archive_write_open");
  for (const Entry& e : entries) {
    std::unique_ptr<archive_entry, EntryFree> ae(archive_entry_new());
    archive_entry_set_pathname(ae.get(), e.path.c_str());
    archive_entry_set_uid(ae.get(), e.uid);
    archive_entry_set_gid(ae.get(), e.gid);
    if (!e.uname.empty()) archive_entry_set_uname(ae.get(), e.uname.c_str());
    if (!e.gname.empty()) archive_entry_set_gname(ae.get(), e.gname.c_str());
    archive_entry_set_mtime(ae.get(), e.mtime, 0);
    for (const auto& [k, v] : e.xattrs)
      archive_entry_xattr_add_entry(ae.get(), k.c_str(), v.data(), v.size());
    mode_t type = AE_IFREG;
    switch (e.type) {
      case Entry::Type::kFile:
        type = AE_IFREG;
        break;
      case Entry::Type::kDir:
        type = AE_IFDIR;
        break;
      case Entry::Type::kSymlink:
        type = AE_IFLNK;
        break;
      case Entry::Type::kHardlink:
        type = AE_IFREG;
        break;
      case Entry::Type::kCharDev:
        type = AE_IFCHR;
        break;
      case Entry::Type::kBlockDev:
        type = AE_IFBLK;
        break;
      case Entry::Type::kFifo:
        type = AE_IFIFO;
        break;
    }
    archive_entry_set_filetype(ae.get(), type);
    archive_entry_set_perm(ae.get(), e.mode & 07777);
    if (e.type == Entry::Type::kSymlink) archive_entry_set_symlink(ae.get(), e.target.c_str());
    if (e.type == Entry::Type::kHardlink) archive_entry_set_hardlink(ae.get(), e.target.c_str());
    if (e.type == Entry::Type::kCharDev || e.type == Entry::Type::kBlockDev)
      archive_entry_set_rdev(ae.get(), makedev(e.dev_major, e.dev_minor));
    archive_entry_set_size(
        ae.get(), e.type == Entry::Type::kFile ? static_cast<la_int64_t>(e.content.size()) : 0);
    if (archive_write_header(a.get(), ae.get()) != ARCHIVE_OK)
      archive_fail(a.get(), "tar header for " + e.path);
    if (e.type == Entry::Type::kFile && !e.content.empty()) {
      if (archive_write_data(a.get(), e.content.data(), e.content.size()) !=
          static_cast<la_ssize_t>(e.content.size()))
        archive_fail(a.get(), "tar data for " + e.path);
    }
  }
  if (archive_write_close(a.get()) != ARCHIVE_OK) archive_fail(a.get(), "archive_write_close");
  return out;
}

std::string layer_media_type(ManifestFormat f, LayerCompression c) {
  if (f == ManifestFormat::kDocker) {
    if (c != LayerCompression::kGzip)
      throw Error(ErrorKind::kInvalidArgument, "Docker schema 2 layers must be gzip-compressed");
    return "application/vnd.docker.image.rootfs.diff.tar.gzip";
  }
  switch (c) {
    case LayerCompression::kGzip:
      return "application/vnd.oci.image.layer.v1.tar+gzip";
    case LayerCompression::kZstd:
      return "application/vnd.oci.image.layer.v1.tar+zstd";
    case LayerCompression::kNone:
      return "application/vnd.oci.image.layer.v1.tar";
  }
  return "";
}

BuiltBlob blob(std::string media_type, std::string data) {
  BuiltBlob b;
  b.media_type = std::move(media_type);
  b.digest = Digest::sha256_of(data);
  b.data = std::move(data);
  return b;
}

ordered_json descriptor(const BuiltBlob& b) {
  return {{"mediaType", b.media_type}, {"digest", b.digest.str()}, {"size", b.size()}};
}

ordered_json platform_json(const ImageConfigSpec& c) {
  ordered_json p = {{"architecture", c.architecture}, {"os", c.os}};
  if (!c.variant.empty()) p["variant"] = c.variant;
  return p;
}

void put_blob(const fs::path& dir, const BuiltBlob& b) {
  fs::path p = dir / "blobs" / b.digest.algorithm() / b.digest.hex();
  fs::create_directories(p.parent_path());
  if (!fs::exists(p)) write_file_atomic(p, b.data);
}

void put_image_blobs(const fs::path& dir, const BuiltImage& img) {
  for (const auto& l : img.layers) put_blob(dir, l);
  put_blob(dir, img.config);
  put_blob(dir, img.manifest);
}

// Adds descriptors to dir/index.json (creating the layout if needed), replacing any earlier
// entry with the same ref name.
void add_to_index_json(const fs::path& dir, const std::vector<ordered_json>& descs) {
  fs::create_directories(dir / "blobs" / "sha256");
  write_file_atomic(dir / "oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
  ordered_json index = {{"schemaVersion", 2},
                        {"mediaType", "application/vnd.oci.image.index.v1+json"},
                        {"manifests", ordered_json::array()}};
  if (fs::exists(dir / "index.json")) index = ordered_json::parse(read_file(dir / "index.json"));
  for (const auto& d : descs) {
    std::string ref = d["annotations"]["org.opencontainers.image.ref.name"];
    auto& m = index["manifests"];
    for (auto it = m.begin(); it != m.end();) {
      if (it->contains("annotations") &&
          (*it)["annotations"].value("org.opencontainers.image.ref.name", "") == ref)
        it = m.erase(it);
      else
        ++it;
    }
    m.push_back(d);
  }
  write_file_atomic(dir / "index.json", index.dump());
}

}  // namespace

std::string make_layer_tar(const std::vector<Entry>& entries) {
  return write_tar(entries, LayerCompression::kNone);
}

std::string compress_bytes(std::string_view data, LayerCompression c) {
  if (c == LayerCompression::kNone) return std::string(data);
  std::string out;  // declared first: the archive, freed first, still writes into it on the way out
  std::unique_ptr<archive, ArchiveWriteFree> a(archive_write_new());
  archive_write_set_format_raw(a.get());
  archive_write_set_bytes_per_block(a.get(), 0);
  if (c == LayerCompression::kGzip) {
    archive_write_add_filter_gzip(a.get());
    archive_write_set_filter_option(a.get(), "gzip", "timestamp", nullptr);
  } else {
    archive_write_add_filter_zstd(a.get());
  }
  if (archive_write_open2(a.get(), &out, nullptr, append_cb, nullptr, nullptr) != ARCHIVE_OK)
    archive_fail(a.get(), "archive_write_open");
  std::unique_ptr<archive_entry, EntryFree> ae(archive_entry_new());
  archive_entry_set_filetype(ae.get(), AE_IFREG);
  archive_entry_set_pathname(ae.get(), "data");
  if (archive_write_header(a.get(), ae.get()) != ARCHIVE_OK) archive_fail(a.get(), "raw header");
  for (size_t off = 0; off < data.size();) {
    size_t n = std::min<size_t>(data.size() - off, 1 << 20);
    if (archive_write_data(a.get(), data.data() + off, n) != static_cast<la_ssize_t>(n))
      archive_fail(a.get(), "raw data");
    off += n;
  }
  if (archive_write_close(a.get()) != ARCHIVE_OK) archive_fail(a.get(), "archive_write_close");
  return out;
}

std::function<size_t(void*, size_t)> bytes_source(std::string_view data, size_t chunk) {
  return [data, chunk, pos = size_t{0}](void* buf, size_t n) mutable {
    size_t k = std::min({n, chunk, data.size() - pos});
    std::memcpy(buf, data.data() + pos, k);
    pos += k;
    return k;
  };
}

std::string BuiltImage::platform() const {
  std::string p = spec.config.os + "/" + spec.config.architecture;
  if (!spec.config.variant.empty()) p += "/" + spec.config.variant;
  return p;
}

BuiltImage build_image(const ImageSpec& spec) {
  BuiltImage img;
  img.spec = spec;
  ordered_json diff_ids = ordered_json::array();
  ordered_json history = ordered_json::array();
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    const LayerSpec& ls = spec.layers[i];
    BuiltLayer l;
    l.tar = write_tar(ls.entries, LayerCompression::kNone);
    l.diff_id = Digest::sha256_of(l.tar);
    l.media_type = layer_media_type(spec.format, ls.compression);
    l.data =
        ls.compression == LayerCompression::kNone ? l.tar : write_tar(ls.entries, ls.compression);
    l.digest = Digest::sha256_of(l.data);
    diff_ids.push_back(l.diff_id.str());
    history.push_back({{"created", "2023-11-14T22:13:20Z"},
                       {"created_by", "img2vm test layer " + std::to_string(i)}});
    img.layers.push_back(std::move(l));
  }
  const ImageConfigSpec& c = spec.config;
  ordered_json cfg = ordered_json::object();
  if (!c.env.empty()) cfg["Env"] = c.env;
  if (!c.entrypoint.empty())
    cfg["Entrypoint"] = c.entrypoint;
  else if (c.entrypoint_null)
    cfg["Entrypoint"] = nullptr;
  if (!c.cmd.empty()) cfg["Cmd"] = c.cmd;
  if (!c.working_dir.empty()) cfg["WorkingDir"] = c.working_dir;
  if (!c.user.empty()) cfg["User"] = c.user;
  if (!c.stop_signal.empty()) cfg["StopSignal"] = c.stop_signal;
  if (!c.labels.empty()) cfg["Labels"] = c.labels;
  if (!c.exposed_ports.empty()) {
    cfg["ExposedPorts"] = ordered_json::object();
    for (const auto& p : c.exposed_ports) cfg["ExposedPorts"][p] = ordered_json::object();
  }
  ordered_json config = {
      {"created", "2023-11-14T22:13:20Z"}, {"architecture", c.architecture}, {"os", c.os}};
  if (!c.variant.empty()) config["variant"] = c.variant;
  config["config"] = cfg;
  if (spec.diff_ids) diff_ids = *spec.diff_ids;
  if (!spec.omit_rootfs) config["rootfs"] = {{"type", "layers"}, {"diff_ids", diff_ids}};
  config["history"] = history;
  bool docker = spec.format == ManifestFormat::kDocker;
  img.config = blob(docker ? "application/vnd.docker.container.image.v1+json"
                           : "application/vnd.oci.image.config.v1+json",
                    config.dump());
  ordered_json layers = ordered_json::array();
  for (const auto& l : img.layers) layers.push_back(descriptor(l));
  std::string mt = docker ? "application/vnd.docker.distribution.manifest.v2+json"
                          : "application/vnd.oci.image.manifest.v1+json";
  ordered_json manifest = {{"schemaVersion", 2},
                           {"mediaType", mt},
                           {"config", descriptor(img.config)},
                           {"layers", layers}};
  img.manifest = blob(mt, manifest.dump());
  return img;
}

BuiltIndex build_index(const std::vector<ImageSpec>& specs) {
  if (specs.empty()) throw Error(ErrorKind::kInvalidArgument, "build_index: no images");
  BuiltIndex out;
  ordered_json manifests = ordered_json::array();
  for (const auto& s : specs) {
    out.images.push_back(build_image(s));
    ordered_json d = descriptor(out.images.back().manifest);
    d["platform"] = platform_json(s.config);
    manifests.push_back(d);
  }
  bool docker = specs[0].format == ManifestFormat::kDocker;
  std::string mt = docker ? "application/vnd.docker.distribution.manifest.list.v2+json"
                          : "application/vnd.oci.image.index.v1+json";
  ordered_json index = {{"schemaVersion", 2}, {"mediaType", mt}, {"manifests", manifests}};
  out.index = blob(mt, index.dump());
  return out;
}

void write_oci_layout(const fs::path& dir,
                      const std::vector<std::pair<std::string, BuiltImage>>& tagged) {
  std::vector<ordered_json> descs;
  for (const auto& [tag, img] : tagged) {
    put_image_blobs(dir, img);
    ordered_json d = descriptor(img.manifest);
    d["annotations"] = {{"org.opencontainers.image.ref.name", tag}};
    descs.push_back(d);
  }
  add_to_index_json(dir, descs);
}

void write_oci_layout(const fs::path& dir, const std::string& tag, const BuiltIndex& index) {
  for (const auto& img : index.images) put_image_blobs(dir, img);
  put_blob(dir, index.index);
  ordered_json d = descriptor(index.index);
  d["annotations"] = {{"org.opencontainers.image.ref.name", tag}};
  add_to_index_json(dir, {d});
}

void write_docker_archive(const fs::path& out_file, const BuiltImage& image,
                          const std::vector<std::string>& repo_tags,
                          const DockerArchiveOptions& options) {
  std::vector<Entry> entries;
  ordered_json layer_paths = ordered_json::array();
  std::set<std::string> seen;
  std::string config_name;
  if (options.oci_layout) {
    // docker 25 and later: an OCI layout whose manifest lists the uncompressed layers, and
    // manifest.json pointing at the same blobs.
    auto add_blob = [&](const BuiltBlob& b) {
      std::string p = "blobs/sha256/" + b.digest.hex();
      if (seen.insert(p).second) entries.push_back(file(p, b.data));
      return p;
    };
    entries.push_back(dir("blobs", 0755));
    entries.push_back(dir("blobs/sha256", 0755));
    ordered_json layers = ordered_json::array();
    for (const auto& l : image.layers) {
      BuiltBlob tar = blob("application/vnd.oci.image.layer.v1.tar", l.tar);
      layer_paths.push_back(add_blob(tar));
      layers.push_back(descriptor(tar));
    }
    BuiltBlob config = blob("application/vnd.oci.image.config.v1+json", image.config.data);
    config_name = add_blob(config);
    ordered_json manifest = {{"schemaVersion", 2},
                             {"mediaType", "application/vnd.oci.image.manifest.v1+json"},
                             {"config", descriptor(config)},
                             {"layers", layers}};
    BuiltBlob mblob = blob("application/vnd.oci.image.manifest.v1+json", manifest.dump());
    add_blob(mblob);
    ordered_json d = descriptor(mblob);
    if (!repo_tags.empty()) d["annotations"] = {{"io.containerd.image.name", repo_tags[0]}};
    entries.push_back(
        file("index.json", ordered_json{{"schemaVersion", 2},
                                        {"mediaType", "application/vnd.oci.image.index.v1+json"},
                                        {"manifests", ordered_json::array({d})}}
                               .dump()));
    entries.push_back(file("oci-layout", R"({"imageLayoutVersion":"1.0.0"})"));
  } else {
    for (const auto& l : image.layers) {
      // docker save stores each layer uncompressed under a directory named by its diff id.
      std::string d = l.diff_id.hex();
      std::string p = d + "/layer.tar";
      layer_paths.push_back(p);
      if (!seen.insert(d).second) continue;
      entries.push_back(dir(d, 0755));
      entries.push_back(file(d + "/VERSION", "1.0"));
      entries.push_back(file(p, l.tar));
    }
    config_name = image.config.digest.hex() + ".json";
    entries.push_back(file(config_name, image.config.data));
  }
  ordered_json manifest = ordered_json::array(
      {{{"Config", config_name}, {"RepoTags", repo_tags}, {"Layers", layer_paths}}});
  entries.push_back(file("manifest.json", manifest.dump()));
  ordered_json repos = ordered_json::object();
  for (const auto& rt : repo_tags) {
    auto colon = rt.rfind(':');
    if (colon == std::string::npos || rt.find('/', colon) != std::string::npos) continue;
    repos[rt.substr(0, colon)][rt.substr(colon + 1)] =
        image.layers.empty() ? "" : image.layers.back().diff_id.hex();
  }
  entries.push_back(file("repositories", repos.dump()));
  for (auto& e : entries) e.mtime = 0;
  entries.insert(entries.end(), options.extra_entries.begin(), options.extra_entries.end());
  std::string tar = write_tar(entries, LayerCompression::kNone);
  write_file_atomic(out_file,
                    options.compression.empty() ? tar : compress(tar, options.compression));
}

std::string compress(std::string_view data, const std::string& filter) {
  std::string out;
  std::unique_ptr<archive, ArchiveWriteFree> a(archive_write_new());
  archive_write_set_format_raw(a.get());
  if (archive_write_add_filter_by_name(a.get(), filter.c_str()) != ARCHIVE_OK)
    archive_fail(a.get(), "filter " + filter);
  archive_write_set_bytes_per_block(a.get(), 0);
  if (archive_write_open2(a.get(), &out, nullptr, append_cb, nullptr, nullptr) != ARCHIVE_OK)
    archive_fail(a.get(), "archive_write_open");
  std::unique_ptr<archive_entry, EntryFree> ae(archive_entry_new());
  archive_entry_set_filetype(ae.get(), AE_IFREG);
  if (archive_write_header(a.get(), ae.get()) != ARCHIVE_OK) archive_fail(a.get(), "raw header");
  if (!data.empty() &&
      archive_write_data(a.get(), data.data(), data.size()) != static_cast<la_ssize_t>(data.size()))
    archive_fail(a.get(), "compress");
  if (archive_write_close(a.get()) != ARCHIVE_OK) archive_fail(a.get(), "archive_write_close");
  return out;
}

std::string tar_prefix(const std::vector<Entry>& entries, const std::string& last_path,
                       uint64_t last_size) {
  struct Sink {
    std::string out;
    bool open = true;
  } sink;
  std::unique_ptr<archive, ArchiveWriteFree> a(archive_write_new());
  archive_write_set_format_pax_restricted(a.get());
  archive_write_set_bytes_per_block(a.get(),
                                    0);  // unbuffered: each header reaches the sink at once
  auto cb = [](archive*, void* ud, const void* buf, size_t n) -> la_ssize_t {
    auto* s = static_cast<Sink*>(ud);
    if (!s->open) return -1;  // the last member's data is the caller's
    s->out.append(static_cast<const char*>(buf), n);
    return static_cast<la_ssize_t>(n);
  };
  if (archive_write_open2(a.get(), &sink, nullptr, cb, nullptr, nullptr) != ARCHIVE_OK)
    archive_fail(a.get(), "archive_write_open");
  std::vector<Entry> all = entries;
  all.push_back(file(last_path, ""));
  for (size_t i = 0; i < all.size(); ++i) {
    const Entry& e = all[i];
    bool last = i + 1 == all.size();
    std::unique_ptr<archive_entry, EntryFree> ae(archive_entry_new());
    archive_entry_set_pathname(ae.get(), e.path.c_str());
    archive_entry_set_filetype(ae.get(), e.type == Entry::Type::kDir ? AE_IFDIR : AE_IFREG);
    archive_entry_set_perm(ae.get(), e.mode & 07777);
    archive_entry_set_size(
        ae.get(),
        last ? static_cast<la_int64_t>(last_size)
             : static_cast<la_int64_t>(e.type == Entry::Type::kFile ? e.content.size() : 0));
    if (archive_write_header(a.get(), ae.get()) != ARCHIVE_OK)
      archive_fail(a.get(), "tar header for " + e.path);
    if (!last && e.type == Entry::Type::kFile && !e.content.empty() &&
        archive_write_data(a.get(), e.content.data(), e.content.size()) !=
            static_cast<la_ssize_t>(e.content.size()))
      archive_fail(a.get(), "tar data for " + e.path);
  }
  sink.open = false;
  a.reset();  // its padding of the last member fails into the closed sink: nothing more is kept
  return sink.out;
}

}  // namespace img2vm::testing
