// The WWW-Authenticate header (RFC 7235): one or more challenges, each a scheme followed by
// either a token68 or comma-separated auth-params whose values are tokens or quoted strings
// (with backslash escapes, and commas allowed inside the quotes):
//   Bearer
//   realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull"
//   Basic realm="Registry Realm"
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace img2vm::registry {

struct AuthChallenge {
  std::string scheme;                         // lowercased: "bearer", "basic"
  std::map<std::string, std::string> params;  // names lowercased, values unescaped
  std::string token68;                        // the rare token68 form, else empty

  // The value of a parameter, or "" when absent.
  std::string param(const std::string& name) const {
    auto it = params.find(name);
    return it == params.end() ? std::string() : it->second;
  }
};

// Parses a header value. Throws Error(kInvalidArgument) on malformed input (an unterminated
// quoted string, a parameter without a name, more than 64 KiB).
std::vector<AuthChallenge> parse_www_authenticate(std::string_view value);

}  // namespace img2vm::registry
