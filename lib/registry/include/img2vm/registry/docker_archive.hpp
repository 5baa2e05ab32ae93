// `docker save` tarballs (docker-archive:FILE[:REF]) read in place. One pass over the tar
// indexes its regular members (name -> position in the tar stream, size, sha256); blobs are
// then served as verified byte ranges of the file, never unpacked to disk. Archives compressed
// as a whole with gzip, bzip2, xz or zstd (what `docker load` accepts) are decompressed as a
// stream, within a bound on the expanded size, again for each member read.
//
// Pure functions over a byte source (the file, or memory in the fuzz target):
//   ArchiveBytes src = ...;
//   ArchiveIndex idx = index_archive(src, "image.tar");
//   std::string mj = read_member(src, idx, "manifest.json", kMaxManifestBytes, "image.tar");
//   auto images = parse_archive_manifest(mj, "image.tar");
//   DockerArchiveChoice c = select_archive_image(images, "app:1", "image.tar");
//   auto r = open_member(src, idx, *idx.find(images[c.image].layers[0]), "image.tar");
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "img2vm/base/digest.hpp"
#include "img2vm/registry/image_source.hpp"

namespace img2vm::registry {

// Everything an archive controls is bounded.
struct ArchiveLimits {
  size_t max_entries = 16384;    // tar headers of any type
  size_t max_name_bytes = 1024;  // a regular member's path
  // Compressed archives: the tar stream may expand to max(min_expansion, max_ratio x the file's
  // size) bytes; past that the archive is refused before its data is decompressed.
  uint64_t min_expansion = 256u << 20;
  uint64_t max_ratio = 100;
};
// Layers of one image in manifest.json (docker itself stops at 125).
inline constexpr size_t kMaxArchiveLayers = 1024;

// An archive's bytes: read_at fills up to n bytes from `off` and returns how many (fewer only
// at the end, 0 past it); it throws Error on failure. It must be safe to call from several
// threads at once (blobs are read concurrently).
struct ArchiveBytes {
  std::function<size_t(void* buf, size_t n, uint64_t off)> read_at;
  uint64_t size = 0;
};

// A regular file of the archive: its path and where its bytes are.
struct ArchiveMember {
  std::string name;     // clean relative path (see clean_member_path)
  uint64_t offset = 0;  // of its data in the tar stream (the decompressed one if compressed)
  uint64_t size = 0;
  Digest digest;     // sha256 of its data
  std::string head;  // its first bytes (up to 4), to tell compressed layers by magic
};

// The members of a docker-archive tarball, read once.
struct ArchiveIndex {
  int filter = 0;                // libarchive's ARCHIVE_FILTER_* code; 0 (none) for a plain tar
  std::string compression;       // "" for a plain tar, else "gzip", "bzip2", "xz", "zstd"
  uint64_t stream_bytes = 0;     // bytes of the tar stream read to its end-of-archive marker
  uint64_t expansion_limit = 0;  // bytes of the tar stream that may be decompressed (0: plain)
  size_t entries = 0;            // tar headers seen (all types)
  std::map<std::string, ArchiveMember> members;            // regular files (and hard links to them)
  const ArchiveMember* find(std::string_view name) const;  // by any path clean_member_path accepts
};

// The path of a tar member or of a manifest.json reference, relative and without "./" prefixes;
// empty when it is absolute, has a ".." component or a NUL byte (it would escape the archive).
std::string clean_member_path(std::string_view raw);

// Indexes `src` as a tar, plain or compressed with gzip, bzip2, xz or zstd (once). Errors name
// `what`: kIntegrity (not a tar, truncated, unsafe or duplicate member path), kUnsupported (other
// or nested compression, sparse members), kLimit (a bound of `limits`).
ArchiveIndex index_archive(const ArchiveBytes& src, std::string_view what,
                           const ArchiveLimits& limits = {});

// A verifying reader of member `m`'s bytes (its size and digest are checked at the end).
std::unique_ptr<BlobReader> open_member(const ArchiveBytes& src, const ArchiveIndex& index,
                                        const ArchiveMember& m, std::string_view what);
// A whole member in memory: kNotFound when absent, kLimit when larger than `max`.
std::string read_member(const ArchiveBytes& src, const ArchiveIndex& index, std::string_view name,
                        uint64_t max, std::string_view what);

// One image of manifest.json ([{"Config": ..., "RepoTags": [...], "Layers": [...]}, ...]).
struct DockerArchiveImage {
  bool valid = false;                  // Config is a string and Layers an array of strings
  std::string config;                  // member path of the image config
  std::vector<std::string> layers;     // member paths of the layer tars, bottom first
  std::vector<std::string> repo_tags;  // the strings of RepoTags, as written
  friend bool operator==(const DockerArchiveImage&, const DockerArchiveImage&) = default;
};

// Parses manifest.json (at most kMaxManifestBytes): a non-empty array. Entries that are not
// objects or lack Config/Layers are kept as !valid (an error only if chosen).
std::vector<DockerArchiveImage> parse_archive_manifest(std::string_view bytes,
                                                       std::string_view what);

// Which image of the archive was chosen, and by which tag.
struct DockerArchiveChoice {
  size_t image = 0;  // index into the images
  std::string name;  // the normalized tag it was chosen by, or empty
};

// The image named `want_ref` (normalized; the last entry carrying it), or with no `want_ref` the
// only image, else the first one with a valid tag. Errors: kNotFound (no such tag),
// kInvalidArgument (several untagged images and no ref, or a malformed `want_ref`), kIntegrity (the
// chosen entry is not valid or has more than kMaxArchiveLayers layers). The message lists the
// available tags.
DockerArchiveChoice select_archive_image(const std::vector<DockerArchiveImage>& images,
                                         std::string_view want_ref, std::string_view what);

}  // namespace img2vm::registry
