// Image sources behind one small interface, consumed by pull (into the store) and by later
// stages (convert, run). A source is already resolved to one platform's image manifest.
//
//   auto src = open_image(store, "docker.io/library/alpine:latest");   // from the store
//   auto src = open_image_source("oci:/path/layout:tag", platform);    // OCI image layout
//   auto src = open_image_source("docker-archive:/path/image.tar");   // `docker save` tarball
//   const Manifest& m = src->manifest();
//   std::string cfg = src->config_bytes();            // verified image config JSON
//   for (const Descriptor& l : m.layers) {            // media type, digest, size
//     if (auto p = src->blob_path(l)) ...             // a local file holding the blob, or
//     auto r = src->open_blob(l); r->read(buf, n);    // a stream, verified at its end
//   }
// Registry references are pulled into the store first (see pull.hpp), then opened from it.
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "img2vm/base/digest.hpp"
#include "img2vm/registry/manifest.hpp"

namespace img2vm::registry {

class Store;

// A blob's bytes, checked on the way: when read() returns 0 (the end) the size and sha256 have
// been verified against the descriptor, or Error(kIntegrity) naming the digest was thrown.
class BlobReader {
 public:
  virtual ~BlobReader() = default;
  // Up to n bytes; 0 at the end.
  virtual size_t read(void* buf, size_t n) = 0;
};

// A resolved image, whatever it came from (store, oci: layout, docker-archive:): its manifest,
// config and blobs.
class ImageSource {
 public:
  virtual ~ImageSource() = default;
  // How to name it in messages and in the store: a normalized reference, or "oci:DIR:TAG".
  virtual std::string name() const = 0;
  // The platform-selected image manifest, its exact bytes and their digest.
  virtual const Manifest& manifest() const = 0;
  // The manifest exactly as stored.
  virtual const std::string& manifest_bytes() const = 0;
  // The digest of manifest_bytes().
  virtual Digest manifest_digest() const = 0;
  // The index it was selected from, when there was one.
  virtual std::optional<Digest> index_digest() const { return std::nullopt; }
  // The index exactly as stored, when there was one.
  virtual std::optional<std::string> index_bytes() const { return std::nullopt; }
  // The platform of the image (from the index entry or the config).
  virtual Platform platform() const = 0;
  // The image config JSON (verified).
  virtual std::string config_bytes() const = 0;
  // Any blob of this image (config or layer) as a verifying stream.
  virtual std::unique_ptr<BlobReader> open_blob(const Descriptor& d) const = 0;
  // A local file holding the blob's exact bytes, when the source has one (store, OCI layout).
  virtual std::optional<std::filesystem::path> blob_path(const Descriptor&) const {
    return std::nullopt;
  }
};

// A BlobReader over a local file, verifying `d`'s size and digest.
std::unique_ptr<BlobReader> open_file_blob(const std::filesystem::path& file, const Descriptor& d);
// A BlobReader over raw bytes (`read` returns up to n of them, 0 at the end), verifying `d`'s
// size and digest; `what` says where the bytes come from in errors.
std::unique_ptr<BlobReader> verifying_reader(std::function<size_t(void*, size_t)> read,
                                             Descriptor d, std::string what);

// The entry of an OCI image layout's index.json named `tag` (its org.opencontainers.image.ref.name
// annotation; the last such entry), or with an empty `tag` its only entry. Errors name `what`
// ("oci:DIR") and list the available names: kNotFound (no such tag), kInvalidArgument (several
// entries and no tag).
const Descriptor& select_layout_entry(const Index& index, std::string_view tag,
                                      std::string_view what);

// "oci:DIR[:TAG]" or "docker-archive:FILE[:REF]" (TAG/REF optional when there is one image).
// `want` selects the platform from an index. Error(kInvalidArgument) for other strings.
std::unique_ptr<ImageSource> open_image_source(const std::string& spec,
                                               const Platform& want = host_platform());
// True when `spec` names a local source (oci:, docker-archive:).
bool is_local_source(const std::string& spec);
// An image in the store (by name or reference); Error(kNotFound) if it is not there.
std::unique_ptr<ImageSource> open_image(const Store& store, const std::string& name);

}  // namespace img2vm::registry
