#include "img2vm/registry/client.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <map>
#include <mutex>
#include <thread>

#include "curl_api.hpp"
#include "http_response.hpp"
#include "img2vm/base/ascii.hpp"
#include "img2vm/base/error.hpp"
#include "img2vm/base/version.hpp"
#include "img2vm/registry/manifest.hpp"
#include "img2vm/registry/media_types.hpp"
#include "img2vm/registry/reference.hpp"
#include "www_authenticate.hpp"

namespace img2vm::registry {

using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kMaxErrorBody = 1u << 20;
constexpr long kBlobBufferSize = 512L << 10;  // the largest libcurl before 7.88 accepts

// "host[:port]" of a URL for messages, or the URL itself when it is not one.
std::string url_authority(const std::string& url) {
  auto o = url_origin(url);
  return o ? o->authority() : url;
}

std::string url_escape(const std::string& s) {
  std::string o;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~')
      o.push_back(static_cast<char>(c));
    else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      o += buf;
    }
  }
  return o;
}

bool retriable_transport(CURLcode c) {
  switch (c) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
      return true;
    default:
      return false;
  }
}

bool tls_error(CURLcode c) {
  switch (c) {
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
      return true;
    default:
      return false;
  }
}

bool retriable_status(long s) {
  return s == 408 || s == 429 || s == 500 || s == 502 || s == 503 || s == 504;
}

struct Request {
  std::string method = "GET";
  std::string url;
  std::vector<std::string> headers;
  std::string authorization;  // full header value; sent only to auth_origin (may_send_credentials)
  std::optional<UrlOrigin> auth_origin;
  std::string post_body;
  BlobSink* sink = nullptr;
  uint64_t max_body = kMaxErrorBody;
};

struct Result {
  CURLcode curl = CURLE_OK;
  std::string curl_error;
  long status = 0;
  ResponseHeaders headers;
  std::string body;
  bool body_too_large = false, headers_too_large = false;
  // A 206 whose Content-Range does not start where the Range asked (or is missing): its bytes
  // were not written; the download must start over.
  bool bad_range = false;
  std::string url;  // the last URL requested (after redirects)
  uint64_t streamed = 0;

  std::string header(const std::string& n) const { return headers.get(n); }
};

struct Transfer {
  CURL* h = nullptr;
  const Request* req = nullptr;
  Result* res = nullptr;
  uint64_t range_from = 0;
  bool decided = false, to_sink = false;
  std::exception_ptr error;
};

size_t on_header(char* data, size_t size, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  if (!t->res->headers.add(std::string_view(data, size * n))) {
    t->res->headers_too_large = true;
    return 0;
  }
  return size * n;
}

// Called by curl about once a second (and on every chunk): non-zero abandons the transfer.
int on_xferinfo(void* interrupt, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<const std::atomic<bool>*>(interrupt)->load() ? 1 : 0;
}

size_t on_body(char* data, size_t size, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  size_t len = size * n;
  try {
    if (!t->decided) {
      t->decided = true;
      long status = 0;
      curl::api().easy_getinfo(t->h, CURLINFO_RESPONSE_CODE, &status);
      t->to_sink = t->req->sink && status >= 200 && status < 300;
      if (t->to_sink && status == 206) {
        // Partial content must be the bytes asked for: from range_from on.
        auto cr = parse_content_range(t->res->header("content-range"));
        if (!cr || cr->unsatisfied || cr->first != t->range_from) {
          t->res->bad_range = true;
          return 0;
        }
      } else if (t->to_sink && t->range_from > 0) {
        t->req->sink->restart();  // the server ignored the Range: the whole blob follows
      }
    }
    if (t->to_sink) {
      t->req->sink->write(data, len);
      t->res->streamed += len;
      return len;
    }
    if (t->res->body.size() + len > t->req->max_body) {
      t->res->body_too_large = true;
      return 0;
    }
    t->res->body.append(data, len);
    return len;
  } catch (...) {
    t->error = std::current_exception();
    return 0;
  }
}

// "errors":[{"code":..,"message":..}] of a distribution error body.
std::pair<std::string, std::string> registry_error(const std::string& body) {
  RegistryErrorBody e = parse_registry_error(body);
  return {e.code, e.message};
}

}  // namespace

struct Client::Impl {
  std::string registry, api_host;
  ClientOptions opts;
  CURLSH* share = nullptr;
  std::array<std::mutex, CURL_LOCK_DATA_LAST> share_locks;
  std::mutex pool_mu;
  std::vector<CURL*> pool;

  std::mutex ping_mu;
  bool pinged = false;
  std::string base_url;  // "https://host" or "http://host"
  bool verify_tls = true;

  std::mutex auth_mu;
  std::optional<AuthChallenge> challenge;
  struct Token {
    std::string value;
    Clock::time_point expires;
  };
  std::map<std::string, Token> tokens;
  std::optional<Credentials> creds;
  bool creds_loaded = false;

  mutable std::mutex stats_mu;
  std::map<std::string, uint64_t> stats;

  Impl(std::string reg, ClientOptions o) : registry(std::move(reg)), opts(std::move(o)) {
    (void)curl::api();  // loads libcurl (and initialises it) before any thread uses it
    api_host = registry == kDockerHub ? std::string(kDockerHubApiHost) : registry;
    share = curl::api().share_init();
    curl::api().share_setopt(
        share, CURLSHOPT_LOCKFUNC, +[](CURL*, curl_lock_data d, curl_lock_access, void* u) {
          static_cast<Impl*>(u)->share_locks[d].lock();
        });
    curl::api().share_setopt(
        share, CURLSHOPT_UNLOCKFUNC,
        +[](CURL*, curl_lock_data d, void* u) { static_cast<Impl*>(u)->share_locks[d].unlock(); });
    curl::api().share_setopt(share, CURLSHOPT_USERDATA, this);
    curl::api().share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl::api().share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl::api().share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
  }
  ~Impl() {
    for (CURL* h : pool) curl::api().easy_cleanup(h);
    curl::api().share_cleanup(share);
  }

  void log(const std::string& m) const {
    if (opts.log) opts.log(m);
  }
  void count(const std::string& kind) {
    std::lock_guard l(stats_mu);
    ++stats[kind];
  }

  // Whether `host_port` (a registry's name or API host, as written) was named insecure.
  bool insecure_name(const std::string& host_port) const {
    for (const auto& e : opts.insecure_registries)
      if (ascii_lower(e) == ascii_lower(host_port) ||
          (ascii_lower(e) == registry && host_port == api_host))
        return true;
    return false;
  }
  // Whether requests to this origin were named insecure: only the host[:port] given with
  // --insecure-registry (docker.io's also covers the host serving its API), never another host
  // the registry points to (a token realm, a redirect).
  bool insecure_origin(const UrlOrigin& o) const {
    return insecure_name(o.authority()) || insecure_name(o.host + ":" + std::to_string(o.port));
  }
  // Credentials may go over plain http to a registry named insecure or on loopback (nothing
  // leaves the machine).
  bool plain_http_allowed(const UrlOrigin& o) const {
    return insecure_origin(o) || is_loopback_host(o.host);
  }

  CURL* acquire() {
    {
      std::lock_guard l(pool_mu);
      if (!pool.empty()) {
        CURL* h = pool.back();
        pool.pop_back();
        return h;
      }
    }
    CURL* h = curl::api().easy_init();
    if (!h) throw Error(ErrorKind::kInternal, "curl_easy_init failed");
    return h;
  }
  void release(CURL* h) {
    std::lock_guard l(pool_mu);
    pool.push_back(h);
  }

  // One HTTP exchange, following redirects by hand so that Authorization never reaches
  // another host.
  Result perform(const Request& req, uint64_t range_from) {
    Result res;
    std::string url = req.url;
    CURL* h = acquire();
    struct Releaser {
      Impl* i;
      CURL* h;
      ~Releaser() { i->release(h); }
    } releaser{this, h};
    for (int hop = 0;; ++hop) {
      res = Result{};
      res.url = url;
      curl::api().easy_reset(h);
      Transfer t;
      t.h = h;
      t.req = &req;
      t.res = &res;
      t.range_from = range_from;
      char errbuf[CURL_ERROR_SIZE] = {0};
      curl::easy_setopt(h, CURLOPT_URL, url.c_str());
      curl::easy_setopt(h, CURLOPT_SHARE, share);
      curl::easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
      curl::easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
      curl::easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
      curl::easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
      curl::easy_setopt(h, CURLOPT_CONNECTTIMEOUT, static_cast<long>(opts.connect_timeout.count()));
      curl::easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
      curl::easy_setopt(h, CURLOPT_LOW_SPEED_TIME, static_cast<long>(opts.stall_timeout.count()));
      curl::easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
      curl::easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "identity");
      // Blobs: curl's largest receive buffer, so that a fast connection hands the sink (hash and
      // write) up to 512 KiB per call instead of 16 KiB.
      if (req.sink) curl::easy_setopt(h, CURLOPT_BUFFERSIZE, kBlobBufferSize);
      std::string ua = "img2vm/" + std::string(version());
      curl::easy_setopt(h, CURLOPT_USERAGENT, ua.c_str());
      curl::easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
      curl::easy_setopt(h, CURLOPT_HEADERDATA, &t);
      curl::easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
      curl::easy_setopt(h, CURLOPT_WRITEDATA, &t);
      std::string ca = opts.ca_cert;
      if (ca.empty())
        if (const char* e = std::getenv("SSL_CERT_FILE"); e && *e) ca = e;
      if (!ca.empty()) curl::easy_setopt(h, CURLOPT_CAINFO, ca.c_str());
      std::optional<UrlOrigin> origin = url_origin(url);
      if (!origin) throw Error(ErrorKind::kNetwork, "not an http or https URL: " + url);
      if (insecure_origin(*origin) || (!verify_tls && origin == url_origin(base_url))) {
        curl::easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
        curl::easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
      }
      curl_slist* hdrs = nullptr;
      for (const auto& x : req.headers) hdrs = curl::api().slist_append(hdrs, x.c_str());
      std::string auth_line;
      if (!req.authorization.empty() && req.auth_origin &&
          may_send_credentials(url, *req.auth_origin, plain_http_allowed(*origin))) {
        auth_line = "Authorization: " + req.authorization;
        hdrs = curl::api().slist_append(hdrs, auth_line.c_str());
      }
      curl::easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
      std::string range;
      if (range_from > 0) {
        range = std::to_string(range_from) + "-";
        curl::easy_setopt(h, CURLOPT_RANGE, range.c_str());
      }
      if (req.method == "POST") {
        curl::easy_setopt(h, CURLOPT_POST, 1L);
        curl::easy_setopt(h, CURLOPT_POSTFIELDS, req.post_body.c_str());
        curl::easy_setopt(h, CURLOPT_POSTFIELDSIZE, static_cast<long>(req.post_body.size()));
      } else if (req.method == "HEAD") {
        curl::easy_setopt(h, CURLOPT_NOBODY, 1L);
      }
      if (opts.interrupt) {
        curl::easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl::easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_xferinfo);
        curl::easy_setopt(h, CURLOPT_XFERINFODATA, opts.interrupt);
      }
      res.curl = curl::api().easy_perform(h);
      curl::api().slist_free_all(hdrs);
      // Forget the header list and buffers that are about to go out of scope.
      curl::easy_setopt(h, CURLOPT_HTTPHEADER, nullptr);
      curl::easy_setopt(h, CURLOPT_ERRORBUFFER, nullptr);
      if (t.error) std::rethrow_exception(t.error);
      throw_if_interrupted(url);
      curl::api().easy_getinfo(h, CURLINFO_RESPONSE_CODE, &res.status);
      if (res.curl != CURLE_OK) {
        res.curl_error = errbuf[0] ? errbuf : curl::api().easy_strerror(res.curl);
        if (res.body_too_large) res.curl_error = "response too large";
        if (res.headers_too_large) res.curl_error = "response headers too large";
        if (res.bad_range)
          res.curl_error = "asked for bytes " + std::to_string(range_from) +
                           "- but got Content-Range '" +
                           res.header("content-range").substr(0, 100) + "'";
        return res;
      }
      if (res.status == 301 || res.status == 302 || res.status == 303 || res.status == 307 ||
          res.status == 308) {
        std::optional<std::string> next = resolve_redirect(url, res.header("location"));
        if (!next)
          throw Error(ErrorKind::kNetwork,
                      "broken redirect (not to an http or https URL) fetching " + req.url);
        if (hop >= 10) throw Error(ErrorKind::kNetwork, "too many redirects fetching " + req.url);
        // A POST carries its credentials in the body (an OAuth refresh token): it goes on only
        // where its Authorization header could.
        std::optional<UrlOrigin> next_origin = url_origin(*next);
        if (!req.post_body.empty() &&
            !(req.auth_origin && next_origin &&
              may_send_credentials(*next, *req.auth_origin, plain_http_allowed(*next_origin))))
          throw Error(ErrorKind::kAuth, "refusing to follow a redirect of " + url_authority(url) +
                                            " to " + url_authority(*next) +
                                            " with credentials in the request body");
        log("redirect " + url_authority(url) + " -> " + url_authority(*next));
        url = *next;
        continue;
      }
      return res;
    }
  }

  void throw_if_interrupted(const std::string& url) const {
    if (opts.interrupt && *opts.interrupt)
      throw Error(ErrorKind::kIo, "interrupted while fetching " + url);
  }

  std::chrono::milliseconds backoff(int attempt, const Result& r) const {
    auto d = opts.backoff_initial * (1 << std::min(attempt, 16));
    d = std::min(d, opts.backoff_max);
    if (auto ra = parse_retry_after(r.header("retry-after"), std::chrono::seconds(60)))
      d = std::max<std::chrono::milliseconds>(d, *ra);
    return d;
  }

  // perform() with retries on transient failures; returns the last result when they run out
  // (or on a result that is final). For blob downloads the Range restarts at sink->offset(),
  // and attempts that made progress do not count against the limit. A resumed download that
  // fails the same way twice without a byte, or whose 206 starts elsewhere, starts over whole.
  Result perform_retrying(const Request& req, const std::string& kind) {
    Result r;
    int failures = 0;
    std::string resume_failure;  // how the last resumed attempt failed without progress
    for (int total = 0;; ++total) {
      uint64_t from = req.sink ? req.sink->offset() : 0;
      count(kind);
      r = perform(req, from);
      // The Range is past the end: final (the caller starts over), also when curl complains about
      // the body (distribution 2.8 sends the whole blob's Content-Length with a short body).
      if (r.status == 416) return r;
      bool transient = r.bad_range || (r.curl != CURLE_OK ? retriable_transport(r.curl)
                                                          : retriable_status(r.status));
      if (!transient) return r;
      if (r.streamed > 0) {
        failures = 0;
        resume_failure.clear();
      } else if (req.sink && from > 0) {
        std::string how = r.bad_range          ? "bad Content-Range"
                          : r.curl != CURLE_OK ? curl::api().easy_strerror(r.curl)
                                               : "HTTP " + std::to_string(r.status);
        if (r.bad_range || how == resume_failure) {
          log(kind + " " + r.url + ": resuming at byte " + std::to_string(from) + " failed (" +
              how + (r.bad_range ? "" : ", twice") + "); downloading it whole");
          req.sink->restart();
          resume_failure.clear();
        } else {
          resume_failure = how;
        }
      }
      if (++failures >= opts.max_attempts || total > 100) return r;
      throw_if_interrupted(r.url);
      auto wait = backoff(failures - 1, r);
      log(kind + " " + r.url + ": " +
          (r.curl != CURLE_OK ? r.curl_error : "HTTP " + std::to_string(r.status)) +
          "; retrying in " + std::to_string(wait.count()) + " ms");
      for (auto until = std::chrono::steady_clock::now() + wait;
           std::chrono::steady_clock::now() < until;) {
        throw_if_interrupted(r.url);
        std::this_thread::sleep_for(
            std::min<std::chrono::milliseconds>(wait, std::chrono::milliseconds(100)));
      }
    }
  }

  [[noreturn]] void transport_error(const Result& r, const std::string& what) {
    if (tls_error(r.curl))
      throw Error(ErrorKind::kNetwork,
                  "TLS failure talking to " + url_authority(r.url) + ": " + r.curl_error +
                      " (use --ca-cert FILE to trust a private CA, or --insecure-registry " +
                      registry + ")");
    throw Error(ErrorKind::kNetwork, "cannot " + what + " (" + r.url + "): " + r.curl_error);
  }

  [[noreturn]] void status_error(const Result& r, const std::string& what,
                                 const std::string& repo) {
    auto [code, msg] = registry_error(r.body);
    std::string detail = code.empty() ? "" : " (" + code + (msg.empty() ? "" : ": " + msg) + ")";
    if (r.status == 401 || r.status == 403)
      throw Error(ErrorKind::kAuth, "unauthorized: " + registry + " refused access to " +
                                        (repo.empty() ? std::string("the registry") : repo) +
                                        detail + "; check the credentials (docker login " +
                                        registry + ", or --username/--password-stdin)");
    if (r.status == 429)
      throw Error(ErrorKind::kNetwork, "rate limited by " + registry + " while trying to " + what +
                                           detail +
                                           "; try again later, or log in for a higher limit");
    throw Error(r.status >= 500 ? ErrorKind::kNetwork : ErrorKind::kNotFound,
                registry + " answered HTTP " + std::to_string(r.status) + " to " + what + detail);
  }

  // GET /v2/ at `base` ("https://host" or "http://host"), which becomes base_url.
  Result ping_at(const std::string& base, bool verify, bool retry) {
    base_url = base;
    verify_tls = verify;
    Request req;
    req.url = base_url + "/v2/";
    if (retry) return perform_retrying(req, "ping");
    count("ping");
    return perform(req, 0);
  }

  void ping() {
    std::lock_guard l(ping_mu);
    if (pinged) return;
    bool insecure = insecure_name(api_host);
    // The server did not speak TLS: a plain-HTTP server answering a TLS handshake.
    auto tls_mismatch = [&](CURLcode c) {
      return c == CURLE_SSL_CONNECT_ERROR || c == CURLE_RECV_ERROR || c == CURLE_GOT_NOTHING ||
             (insecure && c != CURLE_OK && !tls_error(c));
    };
    Result last;
    if (is_loopback_host(api_host)) {
      // Loopback: plain HTTP first (nothing leaves the machine either way, and a TLS attempt
      // costs ~0.1 s of loading the system's CA bundle), once and without retries. A port that
      // does not answer like a registry (a TLS server answers 400 or hangs up) gets https; when
      // that is no TLS server either, plain HTTP again with retries decides.
      last = ping_at("http://" + api_host, true, false);
      bool registry_like = last.curl == CURLE_OK && (last.status == 200 || last.status == 401);
      if (!registry_like) {
        bool unreachable = last.curl == CURLE_COULDNT_CONNECT ||
                           last.curl == CURLE_COULDNT_RESOLVE_HOST ||
                           last.curl == CURLE_OPERATION_TIMEDOUT;
        Result tls;
        if (!unreachable) {
          log("plain http to " + api_host + " got " +
              (last.curl != CURLE_OK ? last.curl_error : "HTTP " + std::to_string(last.status)) +
              "; trying https");
          tls = ping_at("https://" + api_host, !insecure, true);
        }
        if (!unreachable && !tls_mismatch(tls.curl))
          last = tls;
        else
          last = ping_at("http://" + api_host, true, true);
      }
      if (last.curl != CURLE_OK) transport_error(last, "reach registry " + registry);
    } else {
      last = ping_at("https://" + api_host, !insecure, true);
      if (insecure && tls_mismatch(last.curl)) {
        log("https to " + api_host + " failed (" + last.curl_error + "); trying plain http");
        last = ping_at("http://" + api_host, true, true);
      }
      if (last.curl != CURLE_OK) transport_error(last, "reach registry " + registry);
    }
    if (last.status == 401) {
      learn_challenge(last);
    } else if (last.status != 200) {
      if (retriable_status(last.status)) status_error(last, "ping /v2/", "");
      throw Error(ErrorKind::kNetwork, registry + " does not look like a registry: GET " +
                                           last.url + " returned HTTP " +
                                           std::to_string(last.status));
    }
    pinged = true;
    log("registry " + registry + " at " + base_url +
        (challenge ? " (auth: " + challenge->scheme + ")" : ""));
  }

  void learn_challenge(const Result& r) {
    std::string h = r.header("www-authenticate");
    std::vector<AuthChallenge> cs;
    try {
      cs = parse_www_authenticate(h);
    } catch (const Error& e) {
      throw e.with_context(registry);
    }
    std::lock_guard l(auth_mu);
    for (auto& c : cs)
      if (c.scheme == "bearer") {
        challenge = c;
        return;
      }
    for (auto& c : cs)
      if (c.scheme == "basic") {
        challenge = c;
        return;
      }
    if (cs.empty())
      throw Error(ErrorKind::kAuth,
                  registry + " requires authentication but sent no WWW-Authenticate challenge");
    throw Error(ErrorKind::kUnsupported,
                registry + " asks for unsupported authentication scheme " + cs[0].scheme);
  }

  const std::optional<Credentials>& credentials() {
    if (!creds_loaded) {
      creds_loaded = true;
      if (opts.credentials)
        creds = opts.credentials;
      else if (opts.use_docker_config)
        creds = lookup_docker_credentials(registry);
      if (creds)
        log("using credentials for " + registry +
            (creds->username.empty() ? "" : " as " + creds->username));
    }
    return creds;
  }

  // The Authorization header value for `scope`, fetching a token if needed. Holds auth_mu.
  std::string authorization(const std::string& scope) {
    std::lock_guard l(auth_mu);
    if (!challenge) return {};
    const auto& c = credentials();
    if (challenge->scheme == "basic") {
      if (!c || c->username.empty()) return {};
      return "Basic " + base64_encode(c->username + ":" + c->password);
    }
    auto it = tokens.find(scope);
    if (it != tokens.end() && Clock::now() < it->second.expires)
      return "Bearer " + it->second.value;
    Token t = fetch_token(scope);
    tokens[scope] = t;
    return "Bearer " + t.value;
  }

  void forget_token(const std::string& scope) {
    std::lock_guard l(auth_mu);
    tokens.erase(scope);
  }

  Token fetch_token(const std::string& scope) {
    std::string realm = challenge->param("realm");
    if (realm.empty())
      throw Error(ErrorKind::kAuth, registry + " sent a Bearer challenge without a realm");
    std::optional<UrlOrigin> realm_origin = url_origin(realm);
    if (!realm_origin)
      throw Error(ErrorKind::kAuth, registry + " sent a token realm that is not an http(s) URL");
    if (realm_origin->scheme != "https" && !plain_http_allowed(*realm_origin))
      throw Error(ErrorKind::kAuth, registry + " sent a token realm that is not https: " + realm);
    std::string service = challenge->param("service");
    const auto& c = credentials();
    Request req;
    req.auth_origin = realm_origin;
    Result r;
    if (c && !c->identity_token.empty()) {
      req.method = "POST";
      req.url = realm;
      req.headers.push_back("Content-Type: application/x-www-form-urlencoded");
      req.post_body = "grant_type=refresh_token&refresh_token=" + url_escape(c->identity_token) +
                      "&service=" + url_escape(service) + "&scope=" + url_escape(scope) +
                      "&client_id=img2vm";
    } else {
      req.url = realm + (realm.find('?') == std::string::npos ? "?" : "&") +
                "service=" + url_escape(service) + "&scope=" + url_escape(scope);
      if (c && !c->username.empty())
        req.authorization = "Basic " + base64_encode(c->username + ":" + c->password);
    }
    r = perform_retrying(req, "token");
    if (r.curl != CURLE_OK) transport_error(r, "get a token from " + realm);
    if (r.status == 401 || r.status == 403)
      throw Error(ErrorKind::kAuth,
                  "unauthorized: the token service of " + registry + " refused " +
                      (c ? std::string("the credentials") : std::string("anonymous access")) +
                      "; check them (docker login " + registry +
                      ", or --username/--password-stdin)");
    if (r.status != 200) status_error(r, "get a token from " + realm, "");
    TokenResponse t = parse_token_response(r.body, realm_origin->str());
    // Renew a little early so that a token does not expire in flight.
    auto life = t.expires_in - std::chrono::seconds(10);
    log("got a token for " + scope + " valid " + std::to_string(t.expires_in.count()) + " s");
    return Token{std::move(t.token), Clock::now() + life};
  }

  // An authenticated request to the registry with one re-authentication on 401.
  Result registry_request(Request req, const std::string& repo, const std::string& kind) {
    ping();
    std::string scope = "repository:" + repo + ":pull";
    req.auth_origin = url_origin(base_url);
    for (int round = 0;; ++round) {
      req.authorization = authorization(scope);
      Result r = perform_retrying(req, kind);
      if (r.curl == CURLE_OK && r.status == 401 && round == 0) {
        learn_challenge(r);
        forget_token(scope);
        continue;
      }
      return r;
    }
  }
};

Client::Client(std::string registry, ClientOptions opts)
    : impl_(std::make_unique<Impl>(std::move(registry), std::move(opts))) {}
Client::~Client() = default;

const std::string& Client::registry() const { return impl_->registry; }
void Client::ping() { impl_->ping(); }

uint64_t Client::request_count(const std::string& kind) const {
  std::lock_guard l(impl_->stats_mu);
  auto it = impl_->stats.find(kind);
  return it == impl_->stats.end() ? 0 : it->second;
}

ManifestResponse Client::get_manifest(const std::string& repo, const std::string& reference) {
  Request req;
  req.url = "";  // set after ping
  impl_->ping();
  req.url = impl_->base_url + "/v2/" + repo + "/manifests/" + reference;
  req.headers.push_back("Accept: " + std::string(media_type::kOciIndex) + ", " +
                        std::string(media_type::kOciManifest) + ", " +
                        std::string(media_type::kDockerManifestList) + ", " +
                        std::string(media_type::kDockerManifest));
  req.max_body = kMaxManifestBytes;
  std::string what = "fetch the manifest " + registry() + "/" + repo +
                     (reference.find(':') != std::string::npos ? "@" : ":") + reference;
  Result r = impl_->registry_request(req, repo, "manifest");
  if (r.body_too_large)
    throw Error(ErrorKind::kLimit, "the manifest of " + registry() + "/" + repo +
                                       " is larger than " +
                                       std::to_string(kMaxManifestBytes >> 20) + " MiB");
  if (r.curl != CURLE_OK) impl_->transport_error(r, what);
  if (r.status == 404) {
    auto [code, msg] = registry_error(r.body);
    bool unknown_repo = code == "NAME_UNKNOWN";
    if (!unknown_repo) {
      // Some registries (distribution 2.x among them) answer MANIFEST_UNKNOWN for a missing
      // repository too; the tag list tells the two apart.
      Request tags;
      tags.url = impl_->base_url + "/v2/" + repo + "/tags/list?n=1";
      Result t = impl_->registry_request(tags, repo, "tags");
      unknown_repo = t.curl == CURLE_OK && t.status == 404;
    }
    if (unknown_repo)
      throw Error(ErrorKind::kNotFound, "unknown repository " + repo + " on " + registry());
    if (reference.find(':') != std::string::npos)
      throw Error(ErrorKind::kNotFound,
                  "manifest " + reference + " not found in " + registry() + "/" + repo);
    throw Error(ErrorKind::kNotFound,
                "tag not found: " + reference + " in " + registry() + "/" + repo);
  }
  if (r.status != 200) impl_->status_error(r, what, repo);
  ManifestResponse m;
  m.body = std::move(r.body);
  m.content_type = r.header("content-type");
  m.docker_content_digest = r.header("docker-content-digest");
  m.digest = Digest::sha256_of(m.body);
  return m;
}

void Client::get_blob(const std::string& repo, const Digest& digest, BlobSink& sink) {
  impl_->ping();
  Request req;
  req.url = impl_->base_url + "/v2/" + repo + "/blobs/" + digest.str();
  req.sink = &sink;
  std::string what = "download blob " + digest.str() + " of " + registry() + "/" + repo;
  Result r = impl_->registry_request(req, repo, "blob");
  if (r.status == 416 && sink.offset() > 0) {
    // The server will not serve the rest (it thinks the partial file reaches the end): start over.
    impl_->log("blob " + digest.str() + ": the registry refused the range from byte " +
               std::to_string(sink.offset()) + " (HTTP 416); downloading it whole");
    sink.restart();
    r = impl_->registry_request(req, repo, "blob");
  }
  if (r.curl != CURLE_OK && r.status != 416) impl_->transport_error(r, what);
  if (r.status == 404)
    throw Error(ErrorKind::kNotFound,
                "blob " + digest.str() + " not found in " + registry() + "/" + repo);
  if (r.status != 200 && r.status != 206) impl_->status_error(r, what, repo);
}

}  // namespace img2vm::registry
