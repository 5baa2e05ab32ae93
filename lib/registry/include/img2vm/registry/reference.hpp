// Docker image references ("alpine", "user/app:1", "host:5000/a/b:tag@sha256:...") parsed with
// Docker's grammar and normalized the way docker and containers/image do:
//   alpine                      -> docker.io/library/alpine:latest
//   user/app                    -> docker.io/user/app:latest
//   index.docker.io/x, registry-1.docker.io/x -> docker.io/library/x:latest
//   localhost/app, host:5000/a/b, my.registry/a -> that registry, as written
// A reference with both a tag and a digest keeps both; the digest is what is pulled.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "img2vm/base/digest.hpp"

namespace img2vm::registry {

inline constexpr std::string_view kDockerHub = "docker.io";
// The host that actually serves Docker Hub's v2 API.
inline constexpr std::string_view kDockerHubApiHost = "registry-1.docker.io";

// A parsed, normalized image reference: registry, repository, tag and/or digest.
struct Reference {
  std::string registry;    // "docker.io", "127.0.0.1:5000", "localhost", "[::1]:5000"
  std::string repository;  // "library/alpine"
  std::string tag;         // "latest" when neither a tag nor a digest was given; may be empty
  std::optional<Digest> digest;

  // Parses and normalizes; an optional "docker://" prefix is accepted. Throws
  // Error(kInvalidArgument) whose message quotes the input and says exactly what is wrong.
  static Reference parse(std::string_view text);

  // "docker.io/library/alpine:latest", "host/a/b@sha256:...", "host/a/b:tag@sha256:...".
  std::string str() const;
  // registry/repository, without tag or digest.
  std::string name() const { return registry + "/" + repository; }
  // What to ask /v2/<repo>/manifests/ for: the digest if there is one, else the tag.
  std::string manifest_reference() const { return digest ? digest->str() : tag; }
  // The host:port that serves the v2 API (registry-1.docker.io for docker.io).
  std::string api_host() const;

  friend bool operator==(const Reference&, const Reference&) = default;
};

// True for hosts that docker talks to over plain HTTP by default: localhost, *.localhost,
// 127.0.0.0/8 and ::1 (with or without a port).
bool is_loopback_host(std::string_view host_port);

}  // namespace img2vm::registry
