// OCI image manifests and indexes, and Docker schema 2 manifests and manifest lists, parsed
// into one model; and platform selection with containerd's matching rules.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "img2vm/base/digest.hpp"

namespace img2vm::registry {

// Largest manifest or index we accept (a registry must accept at least 4 MiB).
inline constexpr uint64_t kMaxManifestBytes = 16u << 20;
// Largest image config we accept.
inline constexpr uint64_t kMaxConfigBytes = 32u << 20;

// An image platform: os, architecture, variant, os.version.
struct Platform {
  std::string os, architecture, variant, os_version;
  std::vector<std::string> os_features;

  // "os/arch[/variant]" (e.g. "linux/arm64/v8"); throws Error(kInvalidArgument) when malformed.
  static Platform parse(std::string_view text);
  // "linux/amd64", "linux/arm/v7".
  std::string str() const;
  // True when neither os nor architecture is set.
  bool empty() const { return os.empty() && architecture.empty(); }
  friend bool operator==(const Platform&, const Platform&) = default;
};

// containerd's normalization: aarch64->arm64, x86_64->amd64, i386->386, armhf->arm/v7,
// armel->arm/v6, arm without variant->arm/v7, arm64/v8->arm64, amd64/v1->amd64, lowercase os.
Platform normalize(Platform p);
// The platform of this process's host (linux/<arch>[/variant]), normalized.
Platform host_platform();
// The platforms that can run on `want`, best first (containerd's "only" matcher): the platform
// itself, then lower variants (arm/v7 -> v6 -> v5, amd64/v3 -> v2 -> v1), 32-bit arm for arm64
// and 386 for amd64.
std::vector<Platform> compatible_platforms(const Platform& want);

// An OCI content descriptor: media type, digest, size (and platform in an index).
struct Descriptor {
  std::string media_type;
  Digest digest;
  int64_t size = 0;
  std::vector<std::string> urls;
  std::map<std::string, std::string> annotations;
  std::optional<Platform> platform;
  std::string artifact_type;
  friend bool operator==(const Descriptor&, const Descriptor&) = default;
};

// An image manifest: its config and layer descriptors.
struct Manifest {
  std::string media_type;  // OCI manifest or Docker schema 2 manifest
  Descriptor config;
  std::vector<Descriptor> layers;
  std::map<std::string, std::string> annotations;
  friend bool operator==(const Manifest&, const Manifest&) = default;
};

// An image index or manifest list: one descriptor per platform.
struct Index {
  std::string media_type;  // OCI index or Docker manifest list
  std::vector<Descriptor> manifests;
  std::map<std::string, std::string> annotations;
  friend bool operator==(const Index&, const Index&) = default;
};

// What a manifest document turned out to be.
struct ParsedManifest {
  std::string media_type;
  std::optional<Manifest> manifest;  // exactly one of these is set
  std::optional<Index> index;
  // True when the document was an index.
  bool is_index() const { return index.has_value(); }
};

// Parses manifest bytes. `content_type` is the Content-Type the registry sent (may be empty);
// the document's own mediaType wins, and a conflict between the two is an error. Docker
// schema 1 is refused with a message saying so; anything larger than kMaxManifestBytes,
// malformed JSON, or a descriptor with a bad digest or size is an Error naming `what`.
ParsedManifest parse_manifest(std::string_view bytes, std::string_view content_type = {},
                              std::string_view what = "manifest");

// True for index entries that are not runnable images: unknown/unknown platforms and
// BuildKit attestation manifests (vnd.docker.reference.type = attestation-manifest).
bool is_attestation(const Descriptor& d);

// Picks the index entry for `want` with containerd's rules: the best compatible platform wins,
// ties go to the first entry; entries without a platform come last; attestations never match.
// Throws Error(kUnsupported) "no image for platform X in WHAT (available: a, b, c)".
const Descriptor& select_platform(const Index& index, const Platform& want, std::string_view what);

}  // namespace img2vm::registry
