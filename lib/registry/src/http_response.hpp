// What the registry client reads from a response, as pure functions (no I/O), so that each is
// unit-tested and fuzzed on its own (fuzz/registry_response_fuzz.cpp): header lines and the
// values of Content-Length, Content-Range, Retry-After, Docker-Content-Digest and Location,
// the origin of a URL and whether credentials may go to it, token and error JSON bodies.
// Everything here treats its input as hostile: bounded, and either a clean value or
// nullopt / Error.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "img2vm/base/digest.hpp"

namespace img2vm::registry {

// ---- headers ----

// "Name: value" (a line as libcurl hands it over, CRLF included or not): the name lowercased,
// the value without surrounding blanks. nullopt for a status line, a blank line, a line
// without ':', an empty name or one with characters RFC 9110 does not allow in a token.
struct HeaderField {
  std::string name, value;
};
std::optional<HeaderField> parse_header_line(std::string_view line);

// The headers of one response (a status line starts a new response: redirects and 100
// Continue come first). Several WWW-Authenticate fields are joined with ", " as RFC 9110 allows;
// for any other repeated field the last wins. At most kMaxBytes of names and values in all:
// add() returns false beyond that (the caller abandons the response).
class ResponseHeaders {
 public:
  static constexpr size_t kMaxBytes = 256u << 10;
  // Feeds one line; false when the headers grew past kMaxBytes.
  bool add(std::string_view line);
  // The value, or "" when absent.
  std::string get(const std::string& lowercase_name) const;
  size_t bytes() const { return bytes_; }
  const std::map<std::string, std::string>& all() const { return fields_; }

 private:
  std::map<std::string, std::string> fields_;
  size_t bytes_ = 0;
};

// Content-Length: 1*DIGIT, at most 2^62.
std::optional<uint64_t> parse_content_length(std::string_view value);

// Content-Range (RFC 9110 §14.4): "bytes FIRST-LAST/COMPLETE", "bytes FIRST-LAST/*", or
// "bytes */COMPLETE" (the answer to an unsatisfiable range, 416). Guarantees: for a range,
// first <= last and, when complete is known, last < complete.
struct ContentRange {
  bool unsatisfied = false;  // "bytes */N": first and last are unset
  uint64_t first = 0, last = 0;
  std::optional<uint64_t> complete;
};
std::optional<ContentRange> parse_content_range(std::string_view value);

// Retry-After as delay-seconds (an HTTP-date is ignored: nullopt), capped at `cap`.
std::optional<std::chrono::seconds> parse_retry_after(
    std::string_view value, std::chrono::seconds cap = std::chrono::seconds(60));

// Docker-Content-Digest: a valid digest, or nullopt.
std::optional<Digest> parse_docker_content_digest(std::string_view value);

// ---- URLs ----

// The origin of an absolute http or https URL: scheme and host lowercased, the port made
// explicit (80/443 when absent). nullopt for anything else (other schemes, no host, a bad port,
// user info, longer than kMaxUrl).
inline constexpr size_t kMaxUrl = 16u << 10;
struct UrlOrigin {
  std::string scheme, host;  // host of an IPv6 address in brackets: "[::1]"
  unsigned port = 0;
  friend bool operator==(const UrlOrigin&, const UrlOrigin&) = default;
  // "host" when the port is the scheme's default, else "host:port" (how registries are named).
  std::string authority() const;
  std::string str() const { return scheme + "://" + authority(); }
};
std::optional<UrlOrigin> url_origin(std::string_view url);

// The target of a redirect: Location resolved against the URL that answered it (it may be
// relative). nullopt unless the result is an absolute http or https URL that url_origin accepts.
std::optional<std::string> resolve_redirect(std::string_view base_url, std::string_view location);

// Whether an Authorization header meant for `auth_origin` may be sent with a request to `url`:
// only to that exact origin (scheme, host and port), and over plain http only when
// `plain_http_allowed` (a registry named insecure, or a loopback one).
bool may_send_credentials(std::string_view url, const UrlOrigin& auth_origin,
                          bool plain_http_allowed);

// ---- bodies ----

// A token service's answer (distribution's token spec and OAuth2): "token", else
// "access_token"; "expires_in" (default 60 s, at least 60 s, at most a day). Throws
// Error(kAuth) naming `realm` for a body that is not a JSON object, has no token, or a token with
// characters that cannot go into a header (only visible ASCII), or longer than 64 KiB.
struct TokenResponse {
  std::string token;
  std::chrono::seconds expires_in{60};
};
inline constexpr size_t kMaxToken = 64u << 10;
TokenResponse parse_token_response(std::string_view body, std::string_view realm);

// The first entry of a distribution error body {"errors":[{"code":..,"message":..}]}; empty
// strings when the body is not one. Both are made printable on one line (control characters
// become spaces) and cut to kMaxErrorText bytes, as they end up in an error message.
inline constexpr size_t kMaxErrorText = 200;
struct RegistryErrorBody {
  std::string code, message;
};
RegistryErrorBody parse_registry_error(std::string_view body);

}  // namespace img2vm::registry
