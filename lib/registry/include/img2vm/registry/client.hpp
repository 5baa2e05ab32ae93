// A client for one registry's distribution API (/v2/) on libcurl: keep-alive connections
// shared across threads (a curl share of connections, DNS and TLS sessions), the /v2/ ping,
// Bearer token and Basic authentication (tokens cached per scope until they expire),
// redirects followed without forwarding Authorization to another origin or over plain http, retries
// with backoff on connection errors, 408, 429 (honouring Retry-After) and 5xx, and Range resume of
// blobs. Thread-safe: one Client may serve many concurrent downloads.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "img2vm/base/digest.hpp"
#include "img2vm/registry/credentials.hpp"

namespace img2vm::registry {

// How a Client reaches registries: trust, credentials, retries, timeouts.
struct ClientOptions {
  // Explicit credentials (--username/--password-stdin); when unset, docker's config.json is
  // consulted (unless use_docker_config is false).
  std::optional<Credentials> credentials;
  bool use_docker_config = true;
  // A PEM bundle to trust instead of the system's (--ca-cert); when empty, $SSL_CERT_FILE.
  std::string ca_cert;
  // Hosts (host[:port]) to reach over HTTPS without verification, or plain HTTP
  // (--insecure-registry): exactly those, not a token realm or redirect target elsewhere.
  // Loopback hosts may always fall back to plain HTTP.
  std::vector<std::string> insecure_registries;
  int max_attempts = 5;
  std::chrono::milliseconds backoff_initial{200};
  std::chrono::milliseconds backoff_max{10000};
  std::chrono::seconds connect_timeout{30};
  // Abort a transfer that moves no bytes for this long (then it is retried).
  std::chrono::seconds stall_timeout{60};
  // When set and it becomes true (Ctrl-C), a request in progress is abandoned within about a
  // second even when no bytes flow, and the call throws Error(kIo, "... interrupted").
  const std::atomic<bool>* interrupt = nullptr;
  // Diagnostics for -v (never carries a secret).
  std::function<void(const std::string&)> log;
};

// Where a blob download writes. offset() is where the next byte goes; restart() is called
// when the server ignored a Range request and the data starts again from 0.
class BlobSink {
 public:
  virtual ~BlobSink() = default;
  // Bytes already held: a download resumes from here.
  virtual uint64_t offset() const = 0;
  // Drops what was written: the data starts again from 0.
  virtual void restart() = 0;
  // Appends `len` downloaded bytes.
  virtual void write(const char* data, size_t len) = 0;
};

// A fetched manifest or index: its bytes, media type and digest.
struct ManifestResponse {
  std::string body;
  std::string content_type;
  std::string docker_content_digest;  // as sent; informational (registries may lie)
  Digest digest;                      // sha256 of body, computed here
};

// An OCI distribution client for one registry: auth, retries, manifests and blobs.
class Client {
 public:
  // `registry` as in Reference::registry ("docker.io" is served by registry-1.docker.io).
  Client(std::string registry, ClientOptions opts = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // The registry host this client talks to.
  const std::string& registry() const;
  // GET /v2/: picks the scheme (https; http for loopback or insecure hosts when https fails)
  // and learns the authentication challenge. Called lazily by the other methods.
  void ping();
  // GET /v2/<repo>/manifests/<reference> accepting OCI and Docker manifests and indexes.
  // Errors: kNotFound "unknown repository" / "tag not found" / "manifest not found", kAuth
  // "unauthorized", kNetwork for rate limiting, TLS and connection failures.
  ManifestResponse get_manifest(const std::string& repo, const std::string& reference);
  // GET /v2/<repo>/blobs/<digest> into sink, starting at sink.offset() (Range), retrying and
  // resuming on failures. Does not verify: the caller hashes what it receives.
  void get_blob(const std::string& repo, const Digest& digest, BlobSink& sink);
  // Number of HTTP requests sent so far, by kind ("ping", "manifest", "blob", "token").
  uint64_t request_count(const std::string& kind) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace img2vm::registry
