#include "www_authenticate.hpp"

#include <cctype>
#include <cstring>

#include "img2vm/base/ascii.hpp"
#include "img2vm/base/error.hpp"

namespace img2vm::registry {

namespace {

bool tchar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) ||
         (c != 0 && std::strchr("!#$%&'*+-.^_`|~", c) != nullptr);
}
bool token68_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) ||
         (c != 0 && std::strchr("-._~+/", c) != nullptr);
}

class Parser {
 public:
  explicit Parser(std::string_view s) : s_(s) {}

  std::vector<AuthChallenge> parse() {
    std::vector<AuthChallenge> out;
    for (;;) {
      skip_ws_and_commas();
      if (done()) break;
      AuthChallenge ch;
      std::string_view scheme = token();
      if (scheme.empty()) fail("expected an authentication scheme");
      ch.scheme = ascii_lower(scheme);
      skip_ws();
      if (!done() && peek() != ',') {
        // Either a token68 or the first auth-param.
        size_t save = i_;
        std::string_view t = token68();
        skip_ws();
        if (!t.empty() && (done() || peek() == ',') && !looks_like_param_at(save)) {
          ch.token68 = std::string(t);
        } else {
          i_ = save;
          params(ch);
        }
      }
      out.push_back(std::move(ch));
    }
    return out;
  }

 private:
  bool done() const { return i_ >= s_.size(); }
  char peek() const { return s_[i_]; }
  void skip_ws() {
    while (!done() && (peek() == ' ' || peek() == '\t')) ++i_;
  }
  void skip_ws_and_commas() {
    while (!done() && (peek() == ' ' || peek() == '\t' || peek() == ',')) ++i_;
  }
  std::string_view token() {
    size_t b = i_;
    while (!done() && tchar(peek())) ++i_;
    return s_.substr(b, i_ - b);
  }
  std::string_view token68() {
    size_t b = i_;
    while (!done() && token68_char(peek())) ++i_;
    while (!done() && peek() == '=') ++i_;
    return s_.substr(b, i_ - b);
  }
  // name *WS "=" *WS followed by something other than '=' , ',' or the end.
  bool looks_like_param_at(size_t pos) const {
    size_t j = pos;
    while (j < s_.size() && tchar(s_[j])) ++j;
    if (j == pos) return false;
    while (j < s_.size() && (s_[j] == ' ' || s_[j] == '\t')) ++j;
    if (j >= s_.size() || s_[j] != '=') return false;
    ++j;
    while (j < s_.size() && (s_[j] == ' ' || s_[j] == '\t')) ++j;
    return j < s_.size() && s_[j] != '=' && s_[j] != ',';
  }
  // auth-param *( "," auth-param ), stopping where the next challenge's scheme begins.
  void params(AuthChallenge& ch) {
    for (;;) {
      skip_ws();
      if (done()) return;
      std::string_view name = token();
      if (name.empty()) fail("expected a parameter name");
      skip_ws();
      if (done() || peek() != '=') fail("parameter '" + std::string(name) + "' has no '='");
      ++i_;
      skip_ws();
      std::string value;
      if (!done() && peek() == '"') {
        value = quoted();
      } else {
        value = std::string(token());
      }
      ch.params[ascii_lower(name)] = std::move(value);
      skip_ws();
      if (done()) return;
      if (peek() != ',') fail("expected ',' after parameter '" + std::string(name) + "'");
      // Consume commas; a following name=value continues this challenge, anything else is the
      // next challenge's scheme.
      while (!done() && (peek() == ',' || peek() == ' ' || peek() == '\t')) ++i_;
      if (done() || !looks_like_param_at(i_)) return;
    }
  }
  std::string quoted() {
    ++i_;  // opening quote
    std::string v;
    while (!done()) {
      char c = peek();
      ++i_;
      if (c == '"') return v;
      if (c == '\\') {
        if (done()) break;
        v.push_back(peek());
        ++i_;
      } else {
        v.push_back(c);
      }
    }
    fail("unterminated quoted string");
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ErrorKind::kInvalidArgument,
                "malformed WWW-Authenticate header at offset " + std::to_string(i_) + ": " + what);
  }

  std::string_view s_;
  size_t i_ = 0;
};

}  // namespace

std::vector<AuthChallenge> parse_www_authenticate(std::string_view value) {
  if (value.size() > 64 * 1024)
    throw Error(ErrorKind::kInvalidArgument,
                "malformed WWW-Authenticate header: longer than 64 KiB");
  return Parser(value).parse();
}

}  // namespace img2vm::registry
