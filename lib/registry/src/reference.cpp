#include "img2vm/registry/reference.hpp"

#include <algorithm>
#include <cctype>

#include "img2vm/base/ascii.hpp"
#include "img2vm/base/error.hpp"

namespace img2vm::registry {

namespace {

constexpr size_t kMaxNameLength = 255;
constexpr size_t kMaxTagLength = 128;

[[noreturn]] void invalid(std::string_view input, const std::string& what) {
  throw Error(ErrorKind::kInvalidArgument,
              "invalid reference '" + std::string(input) + "': " + what);
}

bool lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool alnum(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

// One path component: lowercase alphanumerics joined by '.', '_', '__' or runs of '-'.
// Returns an empty string when valid, else what is wrong.
std::string check_component(std::string_view c) {
  if (c.empty()) return "empty path component (two '/' in a row, or a leading or trailing '/')";
  for (char ch : c)
    if (ch >= 'A' && ch <= 'Z') return "repository name must be lowercase";
  if (!lower_alnum(c.front()) || !lower_alnum(c.back()))
    return "path component '" + std::string(c) +
           "' must start and end with a lowercase letter or digit";
  for (size_t i = 0; i < c.size();) {
    char ch = c[i];
    if (lower_alnum(ch)) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < c.size() && !lower_alnum(c[j])) ++j;
    std::string_view sep = c.substr(i, j - i);
    bool ok = sep == "." || sep == "_" || sep == "__" ||
              std::all_of(sep.begin(), sep.end(), [](char s) { return s == '-'; });
    if (!ok) {
      for (char s : sep)
        if (s != '.' && s != '_' && s != '-')
          return "character '" + std::string(1, s) + "' is not allowed in a repository name";
      return "separator '" + std::string(sep) + "' is not allowed in '" + std::string(c) + "'";
    }
    i = j;
  }
  return {};
}

// host[:port] where host is a DNS name, an IPv4 address or a bracketed IPv6 address.
std::string check_domain(std::string_view d) {
  std::string_view host = d, port;
  if (!d.empty() && d.front() == '[') {
    size_t close = d.find(']');
    if (close == std::string_view::npos)
      return "unterminated '[' in registry host '" + std::string(d) + "'";
    std::string_view v6 = d.substr(1, close - 1);
    if (v6.empty()) return "empty IPv6 address in registry host";
    for (char c : v6)
      if (!std::isxdigit(static_cast<unsigned char>(c)) && c != ':' && c != '.')
        return "invalid IPv6 address '" + std::string(v6) + "'";
    std::string_view rest = d.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':')
        return "unexpected text after IPv6 address in registry host '" + std::string(d) + "'";
      port = rest.substr(1);
      if (port.empty()) return "empty port in registry host '" + std::string(d) + "'";
    }
    host = {};
  } else if (size_t colon = d.find(':'); colon != std::string_view::npos) {
    host = d.substr(0, colon);
    port = d.substr(colon + 1);
    if (port.empty()) return "empty port in registry host '" + std::string(d) + "'";
  }
  if (!port.empty()) {
    if (port.size() > 5 ||
        !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return "invalid port '" + std::string(port) + "' in registry host '" + std::string(d) + "'";
  }
  if (d.front() == '[') return {};
  if (host.empty()) return "empty registry host";
  size_t start = 0;
  while (start <= host.size()) {
    size_t dot = host.find('.', start);
    std::string_view label =
        host.substr(start, dot == std::string_view::npos ? host.size() - start : dot - start);
    if (label.empty() || !alnum(label.front()) || !alnum(label.back()))
      return "invalid registry host '" + std::string(host) + "'";
    for (char c : label)
      if (!alnum(c) && c != '-')
        return "character '" + std::string(1, c) + "' is not allowed in registry host '" +
               std::string(host) + "'";
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return {};
}

std::string check_tag(std::string_view t) {
  if (t.empty()) return "empty tag after ':'";
  if (t.size() > kMaxTagLength) return "tag is longer than 128 characters";
  auto word = [](char c) { return alnum(c) || c == '_'; };
  if (!word(t.front()))
    return "tag '" + std::string(t) + "' must start with a letter, digit or '_'";
  for (char c : t)
    if (!word(c) && c != '.' && c != '-')
      return "character '" + std::string(1, c) + "' is not allowed in tag '" + std::string(t) + "'";
  return {};
}

bool is_hex64(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

}  // namespace

Reference Reference::parse(std::string_view input) {
  std::string_view s = input;
  if (s.substr(0, 9) == "docker://") s.remove_prefix(9);
  if (s.empty()) invalid(input, "empty reference");
  if (s.size() > 4096) invalid(input.substr(0, 64), "reference is too long");
  for (char c : s)
    if (std::isspace(static_cast<unsigned char>(c)) || static_cast<unsigned char>(c) < 0x20 ||
        c == 0x7f)
      invalid(input, "whitespace or control characters are not allowed");

  Reference r;
  if (size_t at = s.find('@'); at != std::string_view::npos) {
    std::string_view d = s.substr(at + 1);
    if (d.empty()) invalid(input, "empty digest after '@'");
    if (d.find('@') != std::string_view::npos) invalid(input, "more than one '@'");
    if (!Digest::valid(d))
      invalid(input, "'" + std::string(d) +
                         "' is not a valid digest (expected sha256:<64 lowercase hex>)");
    r.digest = Digest::parse(d);
    s = s.substr(0, at);
  }
  if (s.empty()) invalid(input, "missing repository name before '@'");

  // A ':' after the last '/' starts the tag; a ':' before it belongs to host:port.
  size_t slash = s.rfind('/');
  size_t colon = s.rfind(':');
  if (colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash)) {
    std::string_view t = s.substr(colon + 1);
    if (std::string e = check_tag(t); !e.empty()) invalid(input, e);
    r.tag = std::string(t);
    s = s.substr(0, colon);
  }
  if (s.empty()) invalid(input, "missing repository name");

  std::string_view remote = s;
  size_t first = s.find('/');
  if (first != std::string_view::npos) {
    std::string_view head = s.substr(0, first);
    bool is_domain = head.find_first_of(".:") != std::string_view::npos || head == "localhost" ||
                     head.front() == '[';
    if (is_domain) {
      if (std::string e = check_domain(head); !e.empty()) invalid(input, e);
      r.registry = ascii_lower(head);
      remote = s.substr(first + 1);
    }
  } else if (s.find(':') != std::string_view::npos) {
    invalid(input, "unexpected ':'");
  }
  if (remote.empty()) invalid(input, "missing repository name after the registry host");
  for (size_t start = 0;;) {
    size_t next = remote.find('/', start);
    std::string_view comp = remote.substr(
        start, next == std::string_view::npos ? std::string_view::npos : next - start);
    if (std::string e = check_component(comp); !e.empty()) invalid(input, e);
    if (next == std::string_view::npos) break;
    start = next + 1;
  }
  if (r.registry.empty() || r.registry == "index.docker.io" || r.registry == kDockerHubApiHost)
    r.registry = std::string(kDockerHub);
  r.repository = std::string(remote);
  if (r.registry == kDockerHub && r.repository.find('/') == std::string::npos) {
    if (is_hex64(r.repository))
      invalid(input, "a 64-character hexadecimal string is an image ID, not a repository name");
    r.repository = "library/" + r.repository;
  }
  if (r.registry.size() + 1 + r.repository.size() > kMaxNameLength)
    invalid(input, "repository name is longer than 255 characters");
  if (r.tag.empty() && !r.digest) r.tag = "latest";
  return r;
}

std::string Reference::str() const {
  std::string out = name();
  if (!tag.empty()) out += ":" + tag;
  if (digest) out += "@" + digest->str();
  return out;
}

std::string Reference::api_host() const {
  return registry == kDockerHub ? std::string(kDockerHubApiHost) : registry;
}

bool is_loopback_host(std::string_view hp) {
  std::string_view host = hp;
  if (!hp.empty() && hp.front() == '[') {
    size_t close = hp.find(']');
    host = close == std::string_view::npos ? hp : hp.substr(1, close - 1);
    return host == "::1";
  }
  if (size_t c = hp.rfind(':'); c != std::string_view::npos) host = hp.substr(0, c);
  if (host == "localhost") return true;
  if (host.size() > 10 && host.substr(host.size() - 10) == ".localhost") return true;
  if (host.substr(0, 4) == "127.") {
    int dots = 0;
    for (char c : host) {
      if (c == '.')
        ++dots;
      else if (c < '0' || c > '9')
        return false;
    }
    return dots == 3;
  }
  return false;
}

}  // namespace img2vm::registry
