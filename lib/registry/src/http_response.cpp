#include "http_response.hpp"

#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>

#include "curl_api.hpp"
#include "img2vm/base/ascii.hpp"
#include "img2vm/base/error.hpp"

namespace img2vm::registry {

namespace {

constexpr uint64_t kMaxNumber = uint64_t{1} << 62;

bool blank(char c) { return c == ' ' || c == '\t'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && (blank(s.back()) || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  while (!s.empty() && blank(s.front())) s.remove_prefix(1);
  return s;
}

// RFC 9110 tchar.
bool token_char(char c) {
  unsigned char u = static_cast<unsigned char>(c);
  return std::isalnum(u) || std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// 1*DIGIT up to kMaxNumber.
std::optional<uint64_t> parse_number(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v > kMaxNumber) return std::nullopt;
  return v;
}

bool visible_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

struct CurlUrlDeleter {
  void operator()(CURLU* u) const { curl::api().url_cleanup(u); }
};
using CurlUrl = std::unique_ptr<CURLU, CurlUrlDeleter>;

std::optional<std::string> url_part(CURLU* u, CURLUPart part, unsigned flags = 0) {
  char* p = nullptr;
  if (curl::api().url_get(u, part, &p, flags) != CURLUE_OK || !p) return std::nullopt;
  std::string s(p);
  curl::api().free(p);
  return s;
}

std::optional<UrlOrigin> origin_of(CURLU* u) {
  auto scheme = url_part(u, CURLUPART_SCHEME);
  if (!scheme) return std::nullopt;
  std::string sch = ascii_lower(*scheme);
  if (sch != "http" && sch != "https") return std::nullopt;
  // Credentials inside a URL are refused: they would go wherever the URL points.
  if (url_part(u, CURLUPART_USER) || url_part(u, CURLUPART_PASSWORD)) return std::nullopt;
  auto host = url_part(u, CURLUPART_HOST);
  auto port = url_part(u, CURLUPART_PORT, CURLU_DEFAULT_PORT);
  if (!host || host->empty() || !port || !visible_ascii(*host)) return std::nullopt;
  auto p = parse_number(*port);
  if (!p || *p == 0 || *p > 65535) return std::nullopt;
  return UrlOrigin{sch, ascii_lower(*host), static_cast<unsigned>(*p)};
}

// A URL as curl's parser reads it; nullopt for what it refuses or anything with blanks or
// control characters (a NUL would cut the C string short).
CurlUrl parse_url(std::string_view url, CURLU* base = nullptr) {
  if (url.empty() || url.size() > kMaxUrl || !visible_ascii(url)) return nullptr;
  CurlUrl u(base ? curl::api().url_dup(base) : curl::api().url());
  if (!u) return nullptr;
  if (curl::api().url_set(u.get(), CURLUPART_URL, std::string(url).c_str(), 0) != CURLUE_OK)
    return nullptr;
  return u;
}

std::string one_line(std::string s) {
  if (s.size() > kMaxErrorText) s.resize(kMaxErrorText);
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  return s;
}

}  // namespace

std::optional<HeaderField> parse_header_line(std::string_view line) {
  if (line.rfind("HTTP/", 0) == 0) return std::nullopt;
  size_t colon = line.find(':');
  if (colon == std::string_view::npos || colon == 0) return std::nullopt;
  std::string_view name = line.substr(0, colon);
  if (!std::all_of(name.begin(), name.end(), token_char)) return std::nullopt;
  return HeaderField{ascii_lower(name), std::string(trim(line.substr(colon + 1)))};
}

bool ResponseHeaders::add(std::string_view line) {
  if (line.rfind("HTTP/", 0) == 0) {
    fields_.clear();
    bytes_ = 0;
    return true;
  }
  auto f = parse_header_line(line);
  if (!f) return true;
  bytes_ += f->name.size() + f->value.size();
  if (bytes_ > kMaxBytes) return false;
  std::string& slot = fields_[f->name];
  if (f->name == "www-authenticate" && !slot.empty()) {
    slot += ", " + f->value;
    bytes_ += 2;
  } else {
    slot = std::move(f->value);
  }
  return true;
}

std::string ResponseHeaders::get(const std::string& lowercase_name) const {
  auto it = fields_.find(lowercase_name);
  return it == fields_.end() ? std::string() : it->second;
}

std::optional<uint64_t> parse_content_length(std::string_view value) {
  return parse_number(trim(value));
}

std::optional<ContentRange> parse_content_range(std::string_view value) {
  value = trim(value);
  if (value.size() < 6 || ascii_lower(value.substr(0, 6)) != "bytes ") return std::nullopt;
  value.remove_prefix(6);
  size_t slash = value.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  std::string_view range = value.substr(0, slash), complete = value.substr(slash + 1);
  ContentRange r;
  if (complete != "*") {
    r.complete = parse_number(complete);
    if (!r.complete) return std::nullopt;
  }
  if (range == "*") {
    if (!r.complete) return std::nullopt;  // "bytes */*" says nothing
    r.unsatisfied = true;
    return r;
  }
  size_t dash = range.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  auto first = parse_number(range.substr(0, dash)), last = parse_number(range.substr(dash + 1));
  if (!first || !last || *first > *last) return std::nullopt;
  if (r.complete && *last >= *r.complete) return std::nullopt;
  r.first = *first;
  r.last = *last;
  return r;
}

std::optional<std::chrono::seconds> parse_retry_after(std::string_view value,
                                                      std::chrono::seconds cap) {
  value = trim(value);
  if (value.size() > 9) {
    if (std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return cap;
    return std::nullopt;
  }
  auto n = parse_number(value);
  if (!n) return std::nullopt;
  return std::min(std::chrono::seconds(static_cast<int64_t>(*n)), cap);
}

std::optional<Digest> parse_docker_content_digest(std::string_view value) {
  value = trim(value);
  if (!Digest::valid(value)) return std::nullopt;
  return Digest::parse(value);
}

std::string UrlOrigin::authority() const {
  bool default_port = (scheme == "https" && port == 443) || (scheme == "http" && port == 80);
  return default_port ? host : host + ":" + std::to_string(port);
}

std::optional<UrlOrigin> url_origin(std::string_view url) {
  CurlUrl u = parse_url(url);
  if (!u) return std::nullopt;
  return origin_of(u.get());
}

std::optional<std::string> resolve_redirect(std::string_view base_url, std::string_view location) {
  CurlUrl base = parse_url(base_url);
  if (!base || !origin_of(base.get())) return std::nullopt;
  CurlUrl target = parse_url(trim(location), base.get());
  if (!target || !origin_of(target.get())) return std::nullopt;
  auto out = url_part(target.get(), CURLUPART_URL);
  if (!out || out->size() > kMaxUrl || !visible_ascii(*out)) return std::nullopt;
  return out;
}

bool may_send_credentials(std::string_view url, const UrlOrigin& auth_origin,
                          bool plain_http_allowed) {
  auto o = url_origin(url);
  return o && *o == auth_origin && (o->scheme == "https" || plain_http_allowed);
}

TokenResponse parse_token_response(std::string_view body, std::string_view realm) {
  using nlohmann::json;
  json j = json::parse(body, nullptr, false);
  if (!j.is_object())
    throw Error(ErrorKind::kAuth, "the token service " + std::string(realm) +
                                      " answered with something that is not a JSON object");
  TokenResponse r;
  for (const char* key : {"token", "access_token"}) {
    auto it = j.find(key);
    if (it != j.end() && it->is_string() && !it->get_ref<const std::string&>().empty()) {
      r.token = it->get<std::string>();
      break;
    }
  }
  if (r.token.empty())
    throw Error(ErrorKind::kAuth, "the token service " + std::string(realm) + " returned no token");
  if (r.token.size() > kMaxToken || !visible_ascii(r.token))
    throw Error(ErrorKind::kAuth,
                "the token service " + std::string(realm) +
                    " returned a token that cannot be sent (too long, or not visible ASCII)");
  constexpr int64_t kMin = 60, kMax = 24 * 3600;
  int64_t expires = kMin;
  if (auto it = j.find("expires_in"); it != j.end()) {
    if (it->is_number_unsigned())
      expires = static_cast<int64_t>(std::min<uint64_t>(it->get<uint64_t>(), kMax));
    else if (it->is_number_integer())
      expires = it->get<int64_t>();
  }
  r.expires_in = std::chrono::seconds(std::clamp(expires, kMin, kMax));
  return r;
}

RegistryErrorBody parse_registry_error(std::string_view body) {
  using nlohmann::json;
  json j = json::parse(body, nullptr, false);
  RegistryErrorBody r;
  if (!j.is_object()) return r;
  auto e = j.find("errors");
  if (e == j.end() || !e->is_array() || e->empty() || !(*e)[0].is_object()) return r;
  const json& f = (*e)[0];
  if (auto c = f.find("code"); c != f.end() && c->is_string())
    r.code = one_line(c->get<std::string>());
  if (auto m = f.find("message"); m != f.end() && m->is_string())
    r.message = one_line(m->get<std::string>());
  return r;
}

}  // namespace img2vm::registry
