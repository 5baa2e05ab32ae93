// A minimal libcurl client for tests that need to look at a registry from outside (readiness,
// raw responses, the auth dance done by hand). The product's own client is lib/registry.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace img2vm::testing {

struct HttpOptions {
  std::vector<std::string> headers;  // "Name: value"
  std::string ca_file;               // trust this CA (PEM) for https
  std::string basic_user, basic_password;
  std::string bearer;
  std::string body;  // request body for POST/PUT
  long timeout_ms = 10000;
};

struct HttpResponse {
  long status = 0;                             // 0 when the transport failed
  std::string error;                           // curl's message when status is 0
  std::map<std::string, std::string> headers;  // lowercase names; last value wins
  std::string body;
};

HttpResponse http_request(const std::string& method, const std::string& url,
                          const HttpOptions& opts = {});

// Parses a WWW-Authenticate value such as `Bearer realm="...",service="...",scope="..."` into
// its scheme (lowercased) and parameters. Test-only; deliberately simple.
struct Challenge {
  std::string scheme;
  std::map<std::string, std::string> params;
};
Challenge parse_challenge(const std::string& value);

// GETs /v2/<repo>/manifests/<reference> from base_url the way a client must: anonymously first,
// then answering a Basic or Bearer challenge with the given credentials (empty: anonymous).
HttpResponse get_manifest(const std::string& base_url, const std::string& repo,
                          const std::string& reference, const std::string& user,
                          const std::string& password, const std::string& ca_file = "");

}  // namespace img2vm::testing
