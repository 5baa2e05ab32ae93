// Builds OCI/Docker images for tests from a declarative description, so that suites state their
// inputs in code instead of committing binary blobs:
//
//   ImageSpec spec;
//   spec.layers.push_back(layer({file("etc/hostname", "box\n"), dir("var/empty", 0700),
//                               symlink_to("bin/sh", "busybox"), whiteout("etc/motd")}));
//   spec.config.cmd = {"/bin/sh"};
//   BuiltImage img = build_image(spec);
//   write_oci_layout(dir, {{"latest", img}});
//   write_docker_archive(file, img, "example.com/test:1");
//
// Layers are tar streams written with libarchive (PAX, so long names, xattrs and large ids
// survive), compressed as the spec says.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "img2vm/base/digest.hpp"

namespace img2vm::testing {

struct Entry {
  enum class Type { kFile, kDir, kSymlink, kHardlink, kCharDev, kBlockDev, kFifo };
  Type type = Type::kFile;
  std::string path;      // relative, as it appears in the tar (no leading "/" needed)
  std::string content;   // kFile
  std::string target;    // kSymlink: link text; kHardlink: the path of the earlier entry
  unsigned mode = 0644;  // permission bits incl. setuid/setgid/sticky
  int64_t uid = 0, gid = 0;
  int64_t mtime = 1700000000;  // seconds since the epoch
  unsigned dev_major = 0, dev_minor = 0;
  std::map<std::string, std::string>
      xattrs;                // e.g. {"user.k", "v"}, {"security.capability", bytes}
  std::string uname, gname;  // optional owner names in the tar header

  Entry& owner(int64_t u, int64_t g) {
    uid = u;
    gid = g;
    return *this;
  }
  Entry& with_mode(unsigned m) {
    mode = m;
    return *this;
  }
  Entry& with_mtime(int64_t t) {
    mtime = t;
    return *this;
  }
  Entry& xattr(std::string k, std::string v) {
    xattrs[std::move(k)] = std::move(v);
    return *this;
  }
};

Entry file(std::string path, std::string content, unsigned mode = 0644);
Entry dir(std::string path, unsigned mode = 0755);
// (named *_to so as not to collide with POSIX symlink(2) and link(2))
Entry symlink_to(std::string path, std::string target);
Entry hardlink_to(std::string path, std::string target);
Entry chardev(std::string path, unsigned major, unsigned minor, unsigned mode = 0666);
Entry blockdev(std::string path, unsigned major, unsigned minor, unsigned mode = 0660);
Entry fifo(std::string path, unsigned mode = 0644);
// ".wh.<name>" next to the path it hides.
Entry whiteout(const std::string& path);
// ".wh..wh..opq" inside the directory whose lower contents it hides.
Entry opaque(const std::string& dir_path);

enum class LayerCompression { kGzip, kZstd, kNone };

struct LayerSpec {
  std::vector<Entry> entries;
  LayerCompression compression = LayerCompression::kGzip;
};
inline LayerSpec layer(std::vector<Entry> entries, LayerCompression c = LayerCompression::kGzip) {
  return LayerSpec{std::move(entries), c};
}

struct ImageConfigSpec {
  std::vector<std::string> entrypoint, cmd, env;
  std::string working_dir, user, stop_signal;
  std::map<std::string, std::string> labels;
  std::vector<std::string> exposed_ports;  // ExposedPorts keys: "80/tcp", "53/udp"
  std::string os = "linux", architecture = "amd64", variant;
  bool entrypoint_null = true;  // write "Entrypoint": null when entrypoint is empty
};

enum class ManifestFormat { kOci, kDocker };

struct ImageSpec {
  std::vector<LayerSpec> layers;
  ImageConfigSpec config;
  ManifestFormat format = ManifestFormat::kOci;
  // For tests of the diff_id check: the config's rootfs.diff_ids as given here instead of the
  // layers' real ones, or (omit_rootfs) no "rootfs" in the config at all.
  std::optional<std::vector<std::string>> diff_ids;
  bool omit_rootfs = false;
};

struct BuiltBlob {
  std::string media_type;
  Digest digest;
  std::string data;
  uint64_t size() const { return data.size(); }
};

struct BuiltLayer : BuiltBlob {
  Digest diff_id;   // digest of the uncompressed tar
  std::string tar;  // the uncompressed tar stream
};

struct BuiltImage {
  ImageSpec spec;
  std::vector<BuiltLayer> layers;
  BuiltBlob config;
  BuiltBlob manifest;
  std::string platform() const;  // "linux/amd64[/variant]"
};

struct BuiltIndex {
  std::vector<BuiltImage> images;
  BuiltBlob index;  // OCI index or Docker manifest list, by the first image's format
};

// Encodes one layer's tar (uncompressed) from its entries.
std::string make_layer_tar(const std::vector<Entry>& entries);
// `data` as one gzip member or one zstd frame (libarchive's raw writer); unchanged for kNone.
std::string compress_bytes(std::string_view data, LayerCompression c);
// A byte source over `data` (which must outlive it) in the shape of layers::ReadFn: up to n bytes
// per call, at most `chunk` at a time, 0 at the end.
std::function<size_t(void*, size_t)> bytes_source(std::string_view data, size_t chunk = SIZE_MAX);
BuiltImage build_image(const ImageSpec& spec);
// A multi-platform index over images (each built with its own config.os/architecture).
// `extra_entries` are raw descriptors added verbatim (e.g. attestation manifests).
BuiltIndex build_index(const std::vector<ImageSpec>& specs);

// Writes (or adds to) an OCI image layout: blobs/sha256/*, oci-layout and index.json entries
// annotated with org.opencontainers.image.ref.name = tag.
void write_oci_layout(const std::filesystem::path& dir,
                      const std::vector<std::pair<std::string, BuiltImage>>& tagged);
void write_oci_layout(const std::filesystem::path& dir, const std::string& tag,
                      const BuiltIndex& index);
struct DockerArchiveOptions {
  // docker 25 and later: the blobs as an OCI image layout (blobs/sha256/<hex>, index.json,
  // oci-layout) that manifest.json points into; else the legacy <id>/layer.tar layout.
  bool oci_layout = false;
  // Of the whole archive, as `docker save | gzip` makes it; a libarchive filter name ("gzip",
  // "bzip2", "xz", "zstd"), empty for a plain tar.
  std::string compression;
  // Added after docker's own members (e.g. hostile names, many members).
  std::vector<Entry> extra_entries;
};

// Writes a `docker save`-style tarball (manifest.json, <config>.json, <id>/layer.tar).
void write_docker_archive(const std::filesystem::path& file, const BuiltImage& image,
                          const std::vector<std::string>& repo_tags,
                          const DockerArchiveOptions& options = {});

// `data` compressed as one stream by the libarchive filter named `filter` ("gzip", "bzip2",
// "xz", "zstd"). Concatenated streams decompress to the concatenation of their data.
std::string compress(std::string_view data, const std::string& filter);
// The tar stream of `entries` without its end-of-archive blocks, ending in the header of a
// regular file `last_path` of `last_size` bytes whose data the caller appends (then 1024 zero
// bytes end the archive): for archives too large to hold in memory.
std::string tar_prefix(const std::vector<Entry>& entries, const std::string& last_path,
                       uint64_t last_size);

}  // namespace img2vm::testing
