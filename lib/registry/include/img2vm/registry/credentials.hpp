// Registry credentials: given explicitly, or looked up the way docker does in
// $DOCKER_CONFIG/config.json (default ~/.docker/config.json): credHelpers[host], then
// credsStore, then auths[host].auth (base64 "user:password") or identitytoken. Helpers run as
// `docker-credential-NAME get` with the server URL on stdin. Secrets are never logged.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace img2vm::registry {

// What to authenticate with: a username and password, or an identity token.
struct Credentials {
  std::string username;
  std::string password;
  std::string identity_token;  // an OAuth2 refresh token (docker login with a token service)
  // True when nothing is set (anonymous).
  bool empty() const { return username.empty() && password.empty() && identity_token.empty(); }
};

// The directory docker reads config.json from: $DOCKER_CONFIG or ~/.docker.
std::filesystem::path docker_config_dir();

// Credentials for `registry` (as in Reference::registry: "docker.io", "host:5000") from the
// docker config in `config_dir`, or nullopt when there are none. A malformed config.json or a
// failing helper is an Error naming the file or helper.
std::optional<Credentials> lookup_docker_credentials(
    const std::string& registry, const std::filesystem::path& config_dir = docker_config_dir());

// RFC 4648 base64, as used by config.json and HTTP Basic.
std::string base64_encode(std::string_view data);
// Throws Error(kInvalidArgument) on invalid input.
std::string base64_decode(std::string_view data);

}  // namespace img2vm::registry
