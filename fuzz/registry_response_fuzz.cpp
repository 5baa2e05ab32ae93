// The registry client's response handling (lib/registry/src/http_response.hpp) on arbitrary bytes.
// The first byte picks what the rest is: header lines, a Content-Range, a number header, a URL,
// a redirect (base URL, newline, Location), a URL and an origin for credentials, a token body,
// an error body. Besides "no crash", each parser's guarantees are checked, and what can be
// written back is parsed again to the same value.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "http_response.hpp"
#include "img2vm/base/error.hpp"
#include "www_authenticate.hpp"

using namespace img2vm;
using namespace img2vm::registry;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

bool printable(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return false;
  return true;
}

bool lower_token(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if ((c >= 'A' && c <= 'Z') || static_cast<unsigned char>(c) <= 0x20 || c == ':' || c == 0x7f)
      return false;
  return true;
}

void check_origin(const UrlOrigin& o) {
  check(o.scheme == "http" || o.scheme == "https");
  check(!o.host.empty() && o.port >= 1 && o.port <= 65535);
  for (char c : o.host) check(!(c >= 'A' && c <= 'Z') && static_cast<unsigned char>(c) > 0x20);
  // The origin written back is the same origin.
  auto again = url_origin(o.str() + "/");
  check(again && *again == o);
}

void content_range(std::string_view v) {
  auto r = parse_content_range(v);
  if (!r) return;
  std::string total = r->complete ? std::to_string(*r->complete) : "*";
  if (r->unsatisfied) {
    check(r->complete.has_value());
  } else {
    check(r->first <= r->last);
    if (r->complete) check(r->last < *r->complete);
  }
  std::string back = r->unsatisfied ? "bytes */" + total
                                    : "bytes " + std::to_string(r->first) + "-" +
                                          std::to_string(r->last) + "/" + total;
  auto again = parse_content_range(back);
  check(again && again->unsatisfied == r->unsatisfied && again->first == r->first &&
        again->last == r->last && again->complete == r->complete);
}

void numbers(std::string_view v) {
  if (auto n = parse_content_length(v)) check(parse_content_length(std::to_string(*n)) == n);
  if (auto s = parse_retry_after(v, std::chrono::seconds(60)))
    check(s->count() >= 0 && s->count() <= 60);
  if (auto d = parse_docker_content_digest(v)) check(Digest::valid(d->str()));
}

void headers(std::string_view in) {
  ResponseHeaders h;
  while (!in.empty()) {
    size_t nl = in.find('\n');
    std::string_view line = in.substr(0, nl == std::string_view::npos ? in.size() : nl + 1);
    in.remove_prefix(line.size());
    if (auto f = parse_header_line(line)) {
      check(lower_token(f->name));
      check(f->value.empty() ||
            (f->value.front() != ' ' && f->value.front() != '\t' && f->value.back() != ' ' &&
             f->value.back() != '\t' && f->value.back() != '\n' && f->value.back() != '\r'));
    }
    if (!h.add(line)) break;
    check(h.bytes() <= ResponseHeaders::kMaxBytes);
  }
  for (const auto& [name, value] : h.all()) {
    check(lower_token(name));
    content_range(value);
    numbers(value);
  }
  try {
    (void)parse_www_authenticate(h.get("www-authenticate"));
  } catch (const Error&) {
  }
}

void redirect(std::string_view in) {
  size_t nl = in.find('\n');
  if (nl == std::string_view::npos) return;
  std::string_view base = in.substr(0, nl), location = in.substr(nl + 1);
  auto to = resolve_redirect(base, location);
  if (!to) return;
  check(to->size() <= kMaxUrl && printable(*to));
  auto o = url_origin(*to);
  check(o.has_value());
  check_origin(*o);
  auto from = url_origin(base);
  check(from.has_value());
  // Credentials follow a redirect only to their own origin, and never down to plain http.
  if (may_send_credentials(*to, *from, false)) check(*o == *from && o->scheme == "https");
}

void credentials(std::string_view in) {
  size_t nl = in.find('\n');
  if (nl == std::string_view::npos || in.size() < nl + 2) return;
  bool allowed = in[nl + 1] & 1;
  auto origin = url_origin(in.substr(nl + 2));
  if (!origin) return;
  check_origin(*origin);
  std::string_view url = in.substr(0, nl);
  if (may_send_credentials(url, *origin, allowed)) {
    auto o = url_origin(url);
    check(o && *o == *origin && (o->scheme == "https" || allowed));
  }
}

void token(std::string_view body) {
  try {
    TokenResponse t = parse_token_response(body, "https://realm.example/token");
    check(!t.token.empty() && t.token.size() <= kMaxToken);
    for (char c : t.token) check(c > 0x20 && c < 0x7f);
    check(t.expires_in.count() >= 60 && t.expires_in.count() <= 86400);
  } catch (const Error& e) {
    check(e.kind() == ErrorKind::kAuth);
  }
}

void error_body(std::string_view body) {
  RegistryErrorBody e = parse_registry_error(body);
  check(e.code.size() <= kMaxErrorText && e.message.size() <= kMaxErrorText);
  check(printable(e.code) && printable(e.message));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 8) {
    case 0:
      headers(in);
      break;
    case 1:
      content_range(in);
      break;
    case 2:
      numbers(in);
      break;
    case 3:
      if (auto o = url_origin(in)) check_origin(*o);
      break;
    case 4:
      redirect(in);
      break;
    case 5:
      credentials(in);
      break;
    case 6:
      token(in);
      break;
    case 7:
      error_body(in);
      break;
  }
  return 0;
}
